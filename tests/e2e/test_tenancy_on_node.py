"""Redis tenancy end to end: an operator and beat with BEATKEEPER_TENANCY on, worker pods of
two namespaces on the real node, each logged in to the one Redis with the credential the
operator wrote into its pool's Secret.

This operator and beat use their own redbeat prefix and watch only `tn-*` namespaces, so
the session's (single-credential) operator and beat never see their objects.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e_helpers import FAST_WORKER, apply, eventually, get_json, service_env

from beatkeeper.operator.credentials import ROTATE_ANNOTATION, secret_name
from beatkeeper.operator.deployments import CREDENTIAL_ANNOTATION
from beatkeeper_core import contract, keys, tenancy
from beatkeeper_core.keys import key_space
from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.environment import Environment
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.processes import Supervisor

PREFIX = "tn-redbeat:"


@pytest.fixture(scope="module")
def tenancy_plane(
    cluster: Environment, crds: Path, redis_url: str, host_operator_identity: Any
) -> Iterator[int]:
    """The operator (its metrics port is returned) and beat, tenancy on. The operator runs
    as the host operator's user, bound to the chart's rules only, so its Secret writes are
    in the least-privilege audit (test_rbac_least_privilege.py)."""
    supervisor = Supervisor(cluster.log_dir / "tenancy")
    metrics_port = free_port()
    common = {"BEATKEEPER_TENANCY": "true", "BEATKEEPER_REDBEAT_PREFIX": PREFIX}
    operator_env = service_env(
        cluster,
        redis_url,
        BEATKEEPER_WEBHOOK="off",  # the session operator's webhook serves admission
        BEATKEEPER_NAMESPACES="tn-*",
        BEATKEEPER_RESYNC_SECONDS="2",
        BEATKEEPER_METRICS_PORT=str(metrics_port),
        BEATKEEPER_TENANCY_ROTATION_GRACE_SECONDS="5",
        **common,
    )
    if host_operator_identity is not None:
        operator_env["KUBECONFIG"] = str(host_operator_identity.kubeconfig)
    beat_env = service_env(cluster, redis_url, BEATKEEPER_BEAT_LOCK_SECONDS="5", **common)
    try:
        supervisor.start(
            "operator", [sys.executable, "-m", "beatkeeper.cli", "operator"], env=operator_env
        )
        supervisor.start("beat", [sys.executable, "-m", "beatkeeper.cli", "beat"], env=beat_env)
        eventually(lambda: _metrics(metrics_port), 60)
        beat_log = supervisor.log_dir / "beat.log"
        eventually(lambda: "Acquired lock" in beat_log.read_text(), 60)
        yield metrics_port
    finally:
        supervisor.stop_all(grace=20)


def _metrics(port: int) -> str:
    """the tenancy operator serves /metrics"""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def _rejected(port: int) -> float:
    for line in _metrics(port).splitlines():
        if line.startswith(
            'beatkeeper_operator_run_records_rejected_total{reason="foreign_namespace"}'
        ):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def tenants(kubeconfig: Path) -> Iterator[list[str]]:
    names = [f"tn-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        kubectl(kubeconfig, "create", "namespace", name)
        kubectl(
            kubeconfig, "label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted"
        )
    yield names
    for name in names:
        kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _pool(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "p"},
        "spec": {
            "image": image,
            "imagePullPolicy": "Never",
            "replicas": 1,
            "terminationGracePeriodSeconds": 10,
            "template": {"env": [{"name": k, "value": v} for k, v in FAST_WORKER.items()]},
        },
    }


def _task() -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "tick"},
        "spec": {
            "every": "2s",
            "workerPool": "p",
            "task": {"name": "beatkeeper.sleep", "kwargs": {"seconds": 0}},
        },
    }


def _status(kubeconfig: Path, namespace: str) -> dict[str, Any]:
    return dict(get_json(kubeconfig, "st", "tick", "-n", namespace).get("status") or {})


def _succeeded_since(kubeconfig: Path, namespace: str, since: dt.datetime) -> bool:
    """the namespace's ScheduledTask has a run that succeeded since then"""
    last = _status(kubeconfig, namespace).get("lastSuccessfulTime")
    return bool(last) and contract.parse_slot(last) >= since.replace(microsecond=0)


def _secret_url(kubeconfig: Path, namespace: str) -> str:
    secret = get_json(kubeconfig, "secret", secret_name("p"), "-n", namespace)
    return base64.b64decode(secret["data"][tenancy.URL_KEY]).decode()


def _logs_in(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


def _refused(call: Any) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_two_namespaces_share_one_redis_and_reach_only_their_own_keys(
    kubeconfig: Path,
    tenancy_plane: int,
    tenants: list[str],
    worker_image: str,
    admin: redis.Redis,
) -> None:
    first, second = tenants
    started = dt.datetime.now(dt.UTC)
    for namespace in tenants:
        apply(kubeconfig, namespace, _pool(worker_image))
        apply(kubeconfig, namespace, _task())
    for namespace in tenants:
        eventually(lambda ns=namespace: _succeeded_since(kubeconfig, ns, started), 180)

    # Each pool's pods log in as their namespace's user, with the pool's own password.
    url = _secret_url(kubeconfig, first)
    assert url.startswith(f"redis://{tenancy.user_name(first)}:")
    assert admin.acl_getuser(tenancy.user_name(first)) is not None
    theirs = key_space(second)
    their_keys = sorted(k.decode() for k in admin.scan_iter(match=f"{theirs.prefix}*"))
    assert theirs.records_stream() in their_keys
    operator_keys = [
        keys.redbeat_key(second, "tick", PREFIX),
        keys.redbeat_schedule_key(PREFIX),
        f"{keys.TENANCY_STATE_PREFIX}{second}",
    ]
    assert all(admin.exists(key) for key in operator_keys)
    mine = redis.Redis.from_url(url)
    try:
        for key in [*their_keys, *operator_keys]:
            assert _refused(lambda k=key: mine.type(k)), key
            assert _refused(lambda k=key: mine.delete(k)), key
        forged = contract.RunRecord(
            namespace=second,
            name="tick",
            run_id=f"{contract.object_key(second, 'tick')}@forged",
            slot=dt.datetime.now(dt.UTC),
            state=contract.RunState.FAILED,
            attempt=1,
            time=dt.datetime.now(dt.UTC),
            reason="Forged",
        )
        fields: Any = forged.to_stream_fields()
        # Not into the other namespace's stream...
        assert _refused(lambda: mine.xadd(theirs.records_stream(), fields))
        # ...and from its own stream, a record about another namespace changes nothing.
        before = _rejected(tenancy_plane)
        mine.xadd(key_space(first).records_stream(), fields)
        eventually(lambda: _rejected(tenancy_plane) > before, 30)
    finally:
        mine.close()
    status = _status(kubeconfig, second)
    assert "Forged" not in json.dumps(status)
    assert status.get("consecutiveFailures", 0) == 0

    # Rotation on demand: a new password and Secret, the pods restart with it, the old
    # password works for the grace period (5 s here), then not at all.
    kubectl(kubeconfig, "annotate", "wp/p", "-n", first, f"{ROTATE_ANNOTATION}=r1")

    def rotated() -> bool:
        """the Secret and the pod template carry generation 2"""
        secret = get_json(kubeconfig, "secret", secret_name("p"), "-n", first)
        deployment = get_json(kubeconfig, "deploy", "p-workers", "-n", first)
        template = deployment["spec"]["template"]["metadata"]["annotations"]
        return (
            secret["metadata"]["annotations"]["beatkeeper.dev/credential-generation"] == "2"
            and template.get(CREDENTIAL_ANNOTATION) == "2"
        )

    eventually(rotated, 30)
    assert _secret_url(kubeconfig, first) != url
    eventually(lambda: not _logs_in(url), 30)
    assert _logs_in(_secret_url(kubeconfig, first))
    after_rotation = dt.datetime.now(dt.UTC)
    eventually(lambda: _succeeded_since(kubeconfig, first, after_rotation), 120)

    # The namespace's last pool goes: so do its user and (by garbage collection) its Secret.
    second_url = _secret_url(kubeconfig, second)
    kubectl(kubeconfig, "delete", "wp/p", "-n", second, "--wait=false")
    eventually(lambda: admin.acl_getuser(tenancy.user_name(second)) is None, 30)
    assert not _logs_in(second_url)

    def secret_gone() -> bool:
        """the pool's Secret went with it"""
        found = kubectl(kubeconfig, "get", "secret", secret_name("p"), "-n", second, check=False)
        return found.returncode != 0

    eventually(secret_gone, 60)
