"""Helpers shared by the end-to-end tests (imported as a plain module by pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from beatkeeper_devenv.environment import Environment
from beatkeeper_devenv.kube import kubectl

# Scaled down (production: 15 s lease, 5 s renew, 1 s sweep) so recovery shows in seconds.
FAST_WORKER = {
    "BEATKEEPER_LEASE_SECONDS": "3",
    "BEATKEEPER_LEASE_RENEW_SECONDS": "1",
    "BEATKEEPER_SWEEP_SECONDS": "0.5",
    "BEATKEEPER_LIVENESS_SECONDS": "0.5",
}


def eventually(check: Callable[[], Any], timeout: float = 60, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; fail with its docstring."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not met within {timeout} s: {check.__doc__ or check}")
        time.sleep(interval)


def get_json(kubeconfig: Path, *args: str) -> Any:
    return json.loads(kubectl(kubeconfig, "get", *args, "-o", "json").stdout)


def apply(
    kubeconfig: Path, namespace: str, manifest: dict[str, Any] | str, check: bool = True
) -> Any:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=text, check=check)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def scheduled_task(name: str, pool: str = "p", **spec: Any) -> dict[str, Any]:
    """A ScheduledTask manifest on `pool` (the namespace comes from `apply`)."""
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name},
        "spec": {"workerPool": pool, **spec},
    }


def hostless_pool(name: str = "p") -> dict[str, Any]:
    """A pool with no pods: its runs go to worker processes the test starts on the host."""
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {"image": "worker:1", "replicas": 0, "allowedTasks": ["beatkeeper.*", "e2e.*"]},
    }


REPO = Path(__file__).resolve().parents[2]
Verdict = tuple[str, str, str]  # kstatus, Argo CD, Flux healthCheckExprs
CURRENT: Verdict = ("Current", "Healthy", "Current")
IN_PROGRESS: Verdict = ("InProgress", "Progressing", "InProgress")
FAILED: Verdict = ("Failed", "Degraded", "Failed")
SUSPENDED: Verdict = ("Current", "Suspended", "Current")  # kstatus has no suspended state


def verdicts(checker: Path, *objects: dict[str, Any]) -> list[Verdict]:
    """What kstatus, the Argo CD Lua scripts and the Flux CEL expressions say of each object
    (the checker built from tests/health: the real libraries, not imitations)."""
    out = subprocess.run(
        [
            str(checker),
            "-argocd",
            str(REPO / "gitops" / "argocd"),
            "-flux",
            str(REPO / "gitops" / "flux" / "kustomization.yaml"),
        ],
        input=json.dumps(list(objects)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    return [(v["kstatus"], v["argocd"], v["flux"]) for v in lines]


HERE = Path(__file__).resolve().parent


def service_env(cluster: Environment, redis_url: str, **extra: str) -> dict[str, str]:
    env = cluster.kube_env()
    env.pop("BEATKEEPER_KUBECONFIG", None)
    env.update(
        BEATKEEPER_REDIS_URL=redis_url,
        BEATKEEPER_BROKER_URL=redis_url,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        **extra,
    )
    return env
