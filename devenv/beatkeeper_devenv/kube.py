"""kubectl, as a user would run it, for the launcher and the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

CRD_NAMES = ("scheduledtasks.beatkeeper.dev", "workerpools.beatkeeper.dev")


class KubectlFailed(RuntimeError):
    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        super().__init__(
            f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr.strip()}"
        )


def kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    argv = ["kubectl", f"--kubeconfig={kubeconfig}", *args]
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise KubectlFailed(list(args), result)
    return result


def install_crds(kubeconfig: Path, crds_dir: Path, timeout_seconds: int = 60) -> None:
    """Apply the CRDs and wait until the apiserver serves them."""
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(crds_dir))
    names = [f"crd/{name}" for name in CRD_NAMES]
    kubectl(
        kubeconfig, "wait", "--for=condition=Established", f"--timeout={timeout_seconds}s", *names
    )
