"""End-to-end fixtures: the operator and beat as real processes against the session's cluster.

The session's cluster has a real node; its Redis listens on the pod network too,
so worker pods and host processes share it. The host operator watches only the
`t-*` namespaces the `namespace` fixture makes: tests that install the chart use
other namespaces, which the chart's own operator (in a pod) serves alone.

On the local cluster the host operator runs as its own client-certificate user,
`HOST_OPERATOR_USER`, bound to nothing but the operator rules the chart renders
(`helm template`) and the webhook configurations of local mode: so the whole tier
also shows the chart grants enough. That user and the chart's operator
ServiceAccounts are audited (`beatkeeper_devenv.cluster.AUDIT_POLICY`), and
test_rbac_least_privilege.py, which this conftest orders after every other test
of the session (`pytest_collection_modifyitems`), compares what they did with
what the chart grants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import FAST_WORKER, eventually, service_env

from beatkeeper_devenv.build import ensure_health_checker
from beatkeeper_devenv.cluster import AUDITED_GROUP, free_port
from beatkeeper_devenv.environment import Environment
from beatkeeper_devenv.helm import ensure_helm
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.node import GATEWAY
from beatkeeper_devenv.processes import Component, Supervisor
from beatkeeper_devenv.redis import start_redis
from beatkeeper_devenv.settings import DevSettings

WEBHOOK_CONFIG = "beatkeeper.dev"
HOST_OPERATOR_NAMESPACES = "t-*"  # the `namespace` fixture's names
HERE = Path(__file__).resolve().parent
CHART = HERE.parents[1] / "charts" / "beatkeeper"

# Runs after every other test of the session: it reads what the operators did in it.
LAST_MODULE = "test_rbac_least_privilege.py"
DESELECTED = pytest.StashKey[list[pytest.Item]]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move LAST_MODULE's tests to the end; trylast, so after any other reordering."""
    last = [item for item in items if item.path.name == LAST_MODULE]
    items[:] = [item for item in items if item.path.name != LAST_MODULE] + last


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Remember what -m/-k/--deselect left out: LAST_MODULE judges a whole tier only."""
    config = items[0].config if items else None
    if config is not None:
        config.stash.setdefault(DESELECTED, []).extend(items)


# The operator's rules as the chart renders them, per mode: cluster-wide (the default
# values) and namespaced, whose ClusterRole discovers namespaces.
CHART_MODES: dict[str, tuple[str, ...]] = {
    "cluster-wide": (),
    "namespaced": ("--set", "watchNamespaces={team-a}"),
}
HOST_OPERATOR_USER = "beatkeeper:e2e-host-operator"
HOST_OPERATOR_ROLE = "beatkeeper-e2e-host-operator"
# Only local mode (BEATKEEPER_WEBHOOK=local, the host operator's) registers its own webhook
# configurations; the chart ships them as objects and grants none of this.
LOCAL_WEBHOOK_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
        "verbs": ["get", "create", "update", "delete"],
    }
]


def render_operator_rules(helm: Path, *options: str) -> list[dict[str, Any]]:
    """The rules of the operator's ClusterRole and Roles, as `helm template` renders them."""
    only = ("--show-only", "templates/operator-rbac.yaml")
    result = subprocess.run(
        [str(helm), "template", "bk", str(CHART), "-n", "beatkeeper-system", *only, *options],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return [rule for doc in docs if doc["kind"] in ("ClusterRole", "Role") for rule in doc["rules"]]


@pytest.fixture(scope="session")
def chart_operator_rules(dev_settings: DevSettings) -> dict[str, list[dict[str, Any]]]:
    helm = ensure_helm(dev_settings)
    return {mode: render_operator_rules(helm, *options) for mode, options in CHART_MODES.items()}


@dataclass(frozen=True)
class HostOperatorIdentity:
    user: str
    kubeconfig: Path
    local_rules: list[dict[str, Any]]  # granted besides the chart's: LOCAL_WEBHOOK_RULES


@pytest.fixture(scope="session")
def deselected(request: pytest.FixtureRequest) -> list[pytest.Item]:
    """The tests -m, -k or --deselect left out of this session."""
    return request.config.stash.get(DESELECTED, [])


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    }


def _binding(name: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


@pytest.fixture(scope="session")
def host_operator_identity(
    cluster: Environment, chart_operator_rules: dict[str, list[dict[str, Any]]]
) -> Iterator[HostOperatorIdentity | None]:
    """The host operator's own user, with the chart's grants (None on an existing cluster).

    It watches namespace patterns cluster-wide, so it gets the rules of both chart modes
    (the namespaced one adds reading namespaces), plus LOCAL_WEBHOOK_RULES.
    """
    if cluster.user_kubeconfig is None:
        yield None
        return
    chart = [rule for rules in chart_operator_rules.values() for rule in rules]
    roles = {HOST_OPERATOR_ROLE: chart, f"{HOST_OPERATOR_ROLE}-local-webhook": LOCAL_WEBHOOK_RULES}
    objects = [_cluster_role(name, rules) for name, rules in roles.items()]
    objects += [_binding(name, HOST_OPERATOR_USER) for name in roles]
    manifest = {"apiVersion": "v1", "kind": "List", "items": objects}
    kubectl(cluster.kubeconfig, "apply", "-f", "-", stdin=json.dumps(manifest))
    kubeconfig = cluster.user_kubeconfig("e2e-host-operator", HOST_OPERATOR_USER, (AUDITED_GROUP,))

    def bound() -> bool:
        """the host operator's user may list ScheduledTasks (its binding is in force)"""
        answer = kubectl(
            cluster.kubeconfig, "auth", "can-i", "list", "scheduledtasks.beatkeeper.dev",
            "--all-namespaces", f"--as={HOST_OPERATOR_USER}", check=False,
        )  # fmt: skip
        return answer.returncode == 0

    eventually(bound, timeout=30)
    try:
        yield HostOperatorIdentity(HOST_OPERATOR_USER, kubeconfig, LOCAL_WEBHOOK_RULES)
    finally:
        kubectl(cluster.kubeconfig, "delete", "-f", "-", "--ignore-not-found",
                stdin=json.dumps(manifest), check=False)  # fmt: skip


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
    cluster: Environment,
    crds: Path,
    redis_url: str,
    host_operator_identity: HostOperatorIdentity | None,
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
    if host_operator_identity is not None:
        env["KUBECONFIG"] = str(host_operator_identity.kubeconfig)
    supervisor = Supervisor(cluster.log_dir)
    process = OperatorProcess(cluster, supervisor, env)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        supervisor.stop_all()


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
            [sys.executable, "-m", "beatkeeper_worker", f"--hostname={name}@%h"],
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
