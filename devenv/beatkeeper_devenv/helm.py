"""Build and cache Helm from its Go module, as the control plane is built.

`helm.sh/helm/v3` has no replace directives, so `go install module/cmd/helm@version`
builds it with exactly the dependency graph its maintainers pinned in go.sum. The
binary lives under the cache directory beside the control plane's, and shares
its GOMODCACHE and GOCACHE (see `beatkeeper_devenv.build`); its name carries a
hash of the version, the Go toolchain and the link flags, so it is rebuilt only
when one of them changes.

The `-X` flags tell Helm which Kubernetes it renders for when no cluster is
asked (`helm template`, `helm lint`): without them it assumes 1.20, and the
chart's `kubeVersion: ">=1.28.0-0"` would refuse to render.

Helm's go.sum keeps github.com/modern-go/reflect2 v1.0.2, which the control
plane's module replaces; unlike there, no replace is possible with `go install
...@version`, and none is needed: Go 1.24+ keeps the map-iterator linkname shims
that version relies on (runtime/linkname_shim.go), and install, upgrade and
uninstall pass end to end with this build (tests/e2e/test_helm.py).
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from beatkeeper_devenv.build import BuildFailed, GoBuild, Progress, _exclusive, _go_version
from beatkeeper_devenv.settings import DevSettings

HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.17.3"
KUBERNETES_VERSION = ("1", "32")  # the local control plane's minor (tests/cluster)


def helm_ldflags(version: str = HELM_VERSION) -> str:
    major, minor = KUBERNETES_VERSION
    flags = ["-s", "-w", f"-X {HELM_MODULE}/internal/version.version={version}"]
    for package in ("pkg/chartutil", "pkg/lint/rules"):
        flags += [
            f"-X {HELM_MODULE}/{package}.k8sVersionMajor={major}",
            f"-X {HELM_MODULE}/{package}.k8sVersionMinor={minor}",
        ]
    return " ".join(flags)


def helm_binary(settings: DevSettings, version: str = HELM_VERSION) -> Path:
    """Where the cached binary for this version, toolchain and flags lives."""
    digest = hashlib.sha256(
        "\0".join([version, _go_version(), helm_ldflags(version)]).encode()
    ).hexdigest()[:12]
    return settings.cache_dir / "bin" / f"helm-{version}-{digest}"


def _go_env(settings: DevSettings, gobin: Path) -> dict[str, str]:
    # The control plane's environment: same module and build caches, local toolchain.
    env = GoBuild(module_dir=settings.cluster_module, cache_dir=settings.cache_dir).env()
    env["GOBIN"] = str(gobin)
    return env


def _install(settings: DevSettings, version: str, gobin: Path, progress: Progress) -> Path:
    started = time.monotonic()
    cmd = [
        "go",
        "install",
        "-v",
        "-trimpath",
        "-ldflags",
        helm_ldflags(version),
        f"{HELM_MODULE}/cmd/helm@{version}",
    ]
    proc = subprocess.Popen(
        cmd, env=_go_env(settings, gobin), stderr=subprocess.PIPE, text=True, cwd=gobin
    )
    assert proc.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=40)
    compiled = 0
    for line in proc.stderr:
        tail.append(line)
        if not line.startswith("go: "):
            compiled += 1
            if compiled % 50 == 0:
                elapsed = time.monotonic() - started
                progress(f"compiled {compiled} packages ({elapsed:.0f} s)")
    if proc.wait() != 0:
        raise BuildFailed(f"go install {cmd[-1]} failed:\n{''.join(tail)}")
    return gobin / "helm"


def _check(binary: Path, version: str) -> None:
    """A build that cannot report its own version is not kept."""
    out = subprocess.run(
        [str(binary), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 or out.stdout.strip() != version:
        raise BuildFailed(f"{binary} reports {out.stdout.strip()!r}: {out.stderr.strip()}")


def ensure_helm(
    settings: DevSettings, progress: Progress | None = None, version: str = HELM_VERSION
) -> Path:
    """Return the cached Helm binary, building it first if needed."""
    report = progress or _print_progress
    binary = helm_binary(settings, version)
    if binary.exists():
        return binary
    with _exclusive(binary.parent / ".helm.lock"):
        if binary.exists():
            return binary
        started = time.monotonic()
        report(f"building helm {version} from its Go module (cold: a few minutes)")
        gobin = Path(tempfile.mkdtemp(prefix=".helm-build-", dir=binary.parent))
        try:
            built = _install(settings, version, gobin, report)
            _check(built, version)
            built.rename(binary)
        finally:
            shutil.rmtree(gobin, ignore_errors=True)
        report(f"built {binary} in {time.monotonic() - started:.0f} s")
    return binary


class HelmFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Helm:
    """The cached helm against one cluster, with its own config and cache folders."""

    binary: Path
    kubeconfig: Path
    home: Path

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        for part in ("CONFIG", "CACHE", "DATA"):
            env[f"HELM_{part}_HOME"] = str(self.home / part.lower())
        result = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise HelmFailed(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


def _print_progress(message: str) -> None:
    print(f"[beatkeeper] {message}", file=sys.stderr, flush=True)


def main() -> None:
    from beatkeeper_devenv.settings import DevSettings

    print(ensure_helm(DevSettings.from_env(os.environ)))


if __name__ == "__main__":
    main()
