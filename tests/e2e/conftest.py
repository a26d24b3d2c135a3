"""End-to-end fixtures: the operator as a real process against the session's cluster."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import eventually

from beatkeeper.devenv.environment import Environment
from beatkeeper.devenv.kube import kubectl
from beatkeeper.devenv.processes import Component, Supervisor

WEBHOOK_CONFIG = "beatkeeper.dev"


@dataclass
class OperatorProcess:
    """`beatkeeper operator` started and stopped by the tests, by PID."""

    cluster: Environment
    supervisor: Supervisor
    env: dict[str, str]
    component: Component | None = None

    @property
    def log(self) -> Path:
        return self.supervisor.log_dir / "operator.log"

    def start(self) -> None:
        self.component = self.supervisor.start(
            "operator", [sys.executable, "-m", "beatkeeper.cli", "operator"], env=self.env
        )
        eventually(self._webhook_serves, timeout=60)

    def stop(self) -> None:
        if self.component is not None:
            self.supervisor.stop(self.component, grace=20)
            self.component = None
        eventually(self._webhook_removed, timeout=30)

    def _webhook_serves(self) -> bool:
        """the operator's admission webhook refuses an invalid ScheduledTask"""
        assert self.component is not None
        assert self.component.running(), self.log.read_text()[-3000:]
        result = kubectl(
            self.cluster.kubeconfig,
            "create",
            "--dry-run=server",
            "-n",
            "default",
            "-f",
            "-",
            stdin=json.dumps(_probe_task()),
            check=False,
        )
        return "admission webhook" in result.stderr

    def _webhook_removed(self) -> bool:
        """the operator removed its webhook configuration on the way out"""
        result = kubectl(
            self.cluster.kubeconfig,
            "get",
            "validatingwebhookconfiguration",
            WEBHOOK_CONFIG,
            "-o",
            "json",
            check=False,
        )
        if result.returncode != 0:
            return True
        return not json.loads(result.stdout).get("webhooks")


def _probe_task() -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "webhook-probe"},
        "spec": {"every": "0s", "workerPool": "p", "task": {"name": "beatkeeper.sleep"}},
    }


@pytest.fixture(scope="session")
def operator(
    cluster: Environment, crds: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = service_env(cluster, redis_url, BEATKEEPER_RESYNC_SECONDS="2", BEATKEEPER_WEBHOOK="local")
    supervisor = Supervisor(cluster.log_dir)
    process = OperatorProcess(cluster, supervisor, env)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        supervisor.stop_all()


HERE = Path(__file__).resolve().parent
# Scaled down (production: 15 s lease, 5 s renew, 1 s sweep) so recovery shows in seconds.
FAST_WORKER = {
    "BEATKEEPER_LEASE_SECONDS": "3",
    "BEATKEEPER_LEASE_RENEW_SECONDS": "1",
    "BEATKEEPER_SWEEP_SECONDS": "0.5",
    "BEATKEEPER_LIVENESS_SECONDS": "0.5",
}


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


@pytest.fixture(scope="session")
def beat(cluster: Environment, redis_url: str) -> Iterator[Component]:
    """One `beatkeeper beat` for the session (lock timeout scaled down to 5 s)."""
    supervisor = Supervisor(cluster.log_dir)
    env = service_env(
        cluster, redis_url, BEATKEEPER_BEAT_LOCK_SECONDS="5", BEATKEEPER_BEAT_POLL_SECONDS="0.2"
    )
    component = supervisor.start("beat", [sys.executable, "-m", "beatkeeper.cli", "beat"], env=env)
    try:
        eventually(lambda: "Acquired lock" in (cluster.log_dir / "beat.log").read_text(), 60)
        yield component
    finally:
        supervisor.stop_all()


@dataclass
class PoolWorkers:
    """Worker processes for one namespace's pool, started directly (no pod runner)."""

    cluster: Environment
    redis_url: str
    supervisor: Supervisor

    def start(self, namespace: str, pool: str = "p", **extra: str) -> Component:
        alive = (
            self.supervisor.log_dir / f"{namespace}-{pool}-{len(self.supervisor.components)}.alive"
        )
        env = service_env(
            self.cluster,
            self.redis_url,
            BEATKEEPER_WORKER_QUEUE=f"beatkeeper.{namespace}.{pool}",
            BEATKEEPER_TASK_MODULES="e2e_tasks",
            BEATKEEPER_ALLOWED_TASKS="beatkeeper.*,e2e.*",
            BEATKEEPER_WORKER_CONCURRENCY="2",
            BEATKEEPER_LIVENESS_FILE=str(alive),
            **FAST_WORKER,
            **extra,
        )
        name = f"worker-{namespace}-{pool}-{len(self.supervisor.components)}"
        component = self.supervisor.start(
            name,
            [sys.executable, "-m", "beatkeeper.cli", "worker", f"--hostname={name}@%h"],
            env=env,
        )
        eventually(alive.exists, 60)
        return component


@pytest.fixture
def workers(cluster: Environment, redis_url: str) -> Iterator[PoolWorkers]:
    supervisor = Supervisor(cluster.log_dir)
    try:
        yield PoolWorkers(cluster, redis_url, supervisor)
    finally:
        supervisor.stop_all(grace=15)


def pytest_report_header() -> list[str]:
    return [
        "beatkeeper e2e: BEATKEEPER_KUBECONFIG="
        + os.environ.get("BEATKEEPER_KUBECONFIG", "(local)")
    ]


@pytest.fixture(scope="session")
def pod_runner(cluster: Environment) -> Iterator[Component]:
    """The local stand-in for a kubelet: one real worker per WorkerPool pod (e2e tasks loaded)."""
    from beatkeeper.devenv.system import start_pod_runner

    supervisor = Supervisor(cluster.log_dir)
    try:
        yield start_pod_runner(cluster, supervisor, python_path=[HERE])
    finally:
        supervisor.stop_all(grace=15)
