"""Shared fixtures: one control plane with a real node and one Redis per session.

Tiers follow the folders: tests/unit (no processes), tests/integration (real
Redis and Celery), tests/e2e (the real kube-apiserver, a real node that runs
the project's images as pods, Redis and Celery). Set BEATKEEPER_KUBECONFIG to
run the end-to-end tier against an existing cluster, or BEATKEEPER_KIND=1
(`make test-kind`) to have pytest-kind create a kind cluster.

Tests marked `own_node` start their own control plane and node (the demo,
`beatkeeper dev up --only node`). One node runs on a machine at a time, so
they run in a pytest session of their own: `make test` runs the two sessions
one after the other, and selecting both kinds in one session is refused.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from beatkeeper_devenv.environment import Environment, local_environment
from beatkeeper_devenv.kube import install_crds, kubectl
from beatkeeper_devenv.processes import Supervisor
from beatkeeper_devenv.redis import start_redis
from beatkeeper_devenv.settings import DevSettings

REPO = Path(__file__).resolve().parents[1]
_TIERS = ("unit", "integration", "e2e")
_LOG_DIRS: list[Path] = []
# The end-to-end tier's worker image: FROM the worker image, with tests/e2e/e2e_tasks.py.
E2E_IMAGE = ("beatkeeper-e2e-worker", REPO / "tests" / "e2e", ("Dockerfile", "e2e_tasks.py"))


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


def pytest_collection_finish(session: pytest.Session) -> None:
    own = [item for item in session.items if item.get_closest_marker("own_node")]
    shared = [
        item
        for item in session.items
        if item.get_closest_marker("e2e") and not item.get_closest_marker("own_node")
    ]
    if own and shared:
        raise pytest.UsageError(
            f"{len(own)} selected tests start their own node (own_node) and {len(shared)} use "
            "the session's; one node runs per machine, so run them apart: "
            "`pytest -m 'not own_node'` then `pytest -m own_node` (what `make test` does)"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.failed and _LOG_DIRS:  # type: ignore[attr-defined]
        dirs = ", ".join(str(d) for d in _LOG_DIRS)
        report.sections.append(("beatkeeper component logs", dirs))  # type: ignore[attr-defined]
    # Pods' logs live on the node, gone when the session ends: a fixture that knows its
    # pods (such as the chart's release) says what they logged, in the report itself.
    funcargs = getattr(item, "funcargs", {})
    if report.failed and call.when == "call":
        for value in funcargs.values():
            diagnostics = getattr(value, "diagnostics", None)
            if callable(diagnostics):
                report.sections.append(("pods' logs", str(diagnostics())))  # type: ignore[attr-defined]
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
    with local_environment(
        dev_settings,
        redis=False,
        node=external is None,
        external_kubeconfig=external,
        extra_images=[E2E_IMAGE],
    ) as env:
        _LOG_DIRS.append(env.log_dir)
        yield env


@pytest.fixture(scope="session")
def worker_image(cluster: Environment) -> str:
    """The image of the tests' worker pods: the worker image plus e2e_tasks.py."""
    built = cluster.images.get(E2E_IMAGE[0])
    assert built is not None, "the end-to-end worker image needs the local node (or load it)"
    return built.ref.removeprefix("docker.io/library/")


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
