"""End-to-end fixtures: the operator and beat as real processes against the session's cluster.

The session's cluster has a real node; its Redis listens on the pod network too,
so worker pods and host processes share it. The host operator watches only the
`t-*` namespaces the `namespace` fixture makes: tests that install the chart use
other namespaces, which the chart's own operator (in a pod) serves alone.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import FAST_WORKER, eventually

from beatkeeper.devenv.build import ensure_health_checker
from beatkeeper.devenv.cluster import free_port
from beatkeeper.devenv.environment import Environment
from beatkeeper.devenv.kube import kubectl
from beatkeeper.devenv.node import GATEWAY
from beatkeeper.devenv.processes import Component, Supervisor
from beatkeeper.devenv.redis import start_redis
from beatkeeper_core.settings import DevSettings

WEBHOOK_CONFIG = "beatkeeper.dev"
HOST_OPERATOR_NAMESPACES = "t-*"  # the `namespace` fixture's names


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

    @property
    def metrics_port(self) -> int:
        return int(self.env["BEATKEEPER_METRICS_PORT"])

    @property
    def healthz(self) -> str:
        return f"http://127.0.0.1:{self.env['BEATKEEPER_HEALTH_PORT']}/healthz"

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
def redis_url(cluster: Environment, dev_settings: DevSettings) -> Iterator[str]:
    """The session's Redis, on the node's pod network when there is a node."""
    supervisor = Supervisor(cluster.log_dir / "session-redis")
    try:
        _component, url = start_redis(
            supervisor,
            cluster.log_dir / "session-redis" / "data",
            dev_settings.redis_server,
            pod_network=GATEWAY if cluster.node else None,
        )
        yield url
    finally:
        supervisor.stop_all()


@pytest.fixture(scope="session")
def operator(
    cluster: Environment, crds: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = service_env(
        cluster,
        redis_url,
        BEATKEEPER_RESYNC_SECONDS="2",
        BEATKEEPER_WEBHOOK="local",
        BEATKEEPER_NAMESPACES=HOST_OPERATOR_NAMESPACES,
        BEATKEEPER_HEALTH_PORT=str(free_port()),
        BEATKEEPER_METRICS_PORT=str(free_port()),
        BEATKEEPER_OBJECT_BACKOFF_SECONDS="0.5",  # an object in trouble: retried 0.5, 1, 2 s...
    )
    supervisor = Supervisor(cluster.log_dir)
    process = OperatorProcess(cluster, supervisor, env)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        supervisor.stop_all()


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


@pytest.fixture(scope="session")
def beat_metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def beat(cluster: Environment, redis_url: str, beat_metrics_port: int) -> Iterator[Component]:
    """One `beatkeeper beat` for the session (lock timeout scaled down to 5 s)."""
    supervisor = Supervisor(cluster.log_dir)
    env = service_env(
        cluster,
        redis_url,
        BEATKEEPER_BEAT_LOCK_SECONDS="5",
        BEATKEEPER_BEAT_POLL_SECONDS="0.2",
        BEATKEEPER_BEAT_METRICS_PORT=str(beat_metrics_port),
    )
    component = supervisor.start("beat", [sys.executable, "-m", "beatkeeper.cli", "beat"], env=env)
    try:
        eventually(lambda: "Acquired lock" in (cluster.log_dir / "beat.log").read_text(), 60)
        yield component
    finally:
        supervisor.stop_all()


@dataclass
class PoolWorkers:
    """Worker processes for one namespace's pool, started directly (host processes, not pods)."""

    cluster: Environment
    redis_url: str
    supervisor: Supervisor

    def start(self, namespace: str, pool: str = "p", **extra: str) -> Component:
        alive = (
            self.supervisor.log_dir / f"{namespace}-{pool}-{len(self.supervisor.components)}.alive"
        )
        settings = {
            "BEATKEEPER_WORKER_QUEUE": f"beatkeeper.{namespace}.{pool}",
            "BEATKEEPER_TASK_MODULES": "e2e_tasks",
            "BEATKEEPER_ALLOWED_TASKS": "beatkeeper.*,e2e.*",
            "BEATKEEPER_WORKER_CONCURRENCY": "2",
            "BEATKEEPER_LIVENESS_FILE": str(alive),
            **FAST_WORKER,
            **extra,  # may override any of the above
        }
        env = service_env(self.cluster, self.redis_url, **settings)
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
def health_checker(dev_settings: DevSettings) -> Path:
    """The GitOps health checker (kstatus, gopher-lua, cel-go), built once and cached."""
    return ensure_health_checker(dev_settings)
