"""Shared fixtures: one control plane and one Redis per session, a namespace per test.

Tiers follow the folders: tests/unit (no processes), tests/integration (real
Redis and Celery), tests/e2e (the real kube-apiserver too). Set
BEATKEEPER_KUBECONFIG to run the end-to-end tier against an existing cluster,
or BEATKEEPER_KIND=1 (`make test-kind`) to have pytest-kind create a kind cluster.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from beatkeeper.devenv.environment import Environment, local_environment
from beatkeeper.devenv.kube import install_crds, kubectl
from beatkeeper.devenv.processes import Supervisor
from beatkeeper.devenv.redis import start_redis
from beatkeeper_core.settings import DevSettings

REPO = Path(__file__).resolve().parents[1]
_TIERS = ("unit", "integration", "e2e")
_LOG_DIRS: list[Path] = []


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # pytest handles SIGINT; SIGTERM (CI timeouts, `kill`) must unwind fixtures too.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.path)).relative_to(REPO / "tests").parts[0]
        if tier in _TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.failed and _LOG_DIRS:  # type: ignore[attr-defined]
        dirs = ", ".join(str(d) for d in _LOG_DIRS)
        report.sections.append(("beatkeeper component logs", dirs))  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session")
def dev_settings() -> DevSettings:
    return DevSettings.from_env(os.environ)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, dev_settings: DevSettings) -> Iterator[Environment]:
    """A real Kubernetes API for the session: local, existing, or kind."""
    external = dev_settings.external_kubeconfig
    if external is None and os.environ.get("BEATKEEPER_KIND") == "1":
        external = Path(request.getfixturevalue("kind_cluster").kubeconfig_path)
    with local_environment(dev_settings, redis=False, external_kubeconfig=external) as env:
        _LOG_DIRS.append(env.log_dir)
        yield env


@pytest.fixture(scope="session")
def kubeconfig(cluster: Environment) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def crds(kubeconfig: Path) -> Path:
    install_crds(kubeconfig, REPO / "crds")
    return REPO / "crds"


@pytest.fixture(scope="session")
def redis_url(dev_settings: DevSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    supervisor = Supervisor(tmp_path_factory.mktemp("redis-logs"))
    _LOG_DIRS.append(supervisor.log_dir)
    try:
        _component, url = start_redis(
            supervisor, tmp_path_factory.mktemp("redis"), dev_settings.redis_server
        )
        yield url
    finally:
        supervisor.stop_all()


@pytest.fixture
def namespace(kubeconfig: Path) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards without waiting."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl(kubeconfig, "create", "namespace", name)
    yield name
    kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", "--ignore-not-found")
