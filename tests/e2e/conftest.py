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
    env = cluster.kube_env()
    env.update(
        BEATKEEPER_REDIS_URL=redis_url,
        BEATKEEPER_RESYNC_SECONDS="2",
        BEATKEEPER_WEBHOOK="local",
        PYTHONUNBUFFERED="1",
    )
    env.pop("BEATKEEPER_KUBECONFIG", None)
    supervisor = Supervisor(cluster.log_dir)
    process = OperatorProcess(cluster, supervisor, env)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        supervisor.stop_all()


def pytest_report_header() -> list[str]:
    return [
        "beatkeeper e2e: BEATKEEPER_KUBECONFIG="
        + os.environ.get("BEATKEEPER_KUBECONFIG", "(local)")
    ]
