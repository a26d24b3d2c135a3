"""Redis tenancy against a real Redis 7 ACL: real workers of two namespaces, each logged
in with the credential the operator's provisioner made for it.

The provisioner (`TenantCredentials`) runs for real against Redis; only its Secret
writes land in `WrittenSecrets` here, since this tier has no apiserver (the e2e
tier reads the real Secrets: tests/e2e/test_tenancy_on_node.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from worker_helpers import Workers

from beatkeeper.operator.backlog import BacklogProbe
from beatkeeper.operator.credentials import TenantCredentials, secret_name
from beatkeeper.operator.deployments import PoolRef
from beatkeeper.operator.settings import Tenancy
from beatkeeper_core import keys, tenancy
from beatkeeper_core.broker import Registries
from beatkeeper_core.contract import (
    RetryPolicy,
    RunEnvelope,
    RunPolicy,
    RunRecord,
    RunState,
    TaskCall,
    queue_name,
    stream_records,
)
from beatkeeper_core.keys import key_space
from beatkeeper_core.publish import publish_runs
from beatkeeper_devenv.processes import Supervisor
from beatkeeper_worker.app import create_app
from beatkeeper_worker.runtime import runtime_for
from beatkeeper_worker.settings import WorkerSettings

pytestmark = pytest.mark.integration


class WrittenSecrets:
    """The Secrets the provisioner wrote, by (namespace, name)."""

    def __init__(self) -> None:
        self.bodies: dict[tuple[str, str], dict[str, Any]] = {}

    def write_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.bodies[(namespace, body["metadata"]["name"])] = body

    def url(self, pool: PoolRef) -> str:
        body = self.bodies[(pool.namespace, secret_name(pool.name))]
        return base64.b64decode(body["data"][tenancy.URL_KEY]).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provisioned(admin: redis.Redis, redis_url: str, clock: Clock) -> Iterator[Any]:
    secrets = WrittenSecrets()
    credentials = TenantCredentials(
        admin,
        secrets,  # type: ignore[arg-type]
        Tenancy(enabled=True, rotation_grace_seconds=30),
        redis_url,
        clock=clock,
        monotonic=clock,
    )
    tag = uuid.uuid4().hex[:6]
    pools = [PoolRef(f"{side}-{tag}", "pool", str(uuid.uuid4())) for side in ("ta", "tb")]
    for pool in pools:
        assert credentials.ensure(pool) == 1
    yield credentials, secrets, pools
    for pool in pools:
        credentials.release(pool.namespace, pool.uid)


def _run(app: Any, pool: PoolRef, task: str, **kwargs: Any) -> RunEnvelope:
    """Publish a run as beat does under tenancy: into the namespace's key space."""
    envelope = RunEnvelope.for_slot(
        pool.namespace,
        f"st-{uuid.uuid4().hex[:6]}",
        dt.datetime.now(dt.UTC),
        TaskCall(name=task, kwargs=kwargs),
        RunPolicy(retry=RetryPolicy(max_retries=0)),
    )
    admin = runtime_for(app).registry().client
    registry = Registries(admin, tenancy=True).for_namespace(pool.namespace)
    publish_runs(app, [(envelope, queue_name(pool.namespace, pool.name))], registry=registry)
    return envelope


def _records(admin: redis.Redis, namespace: str) -> list[RunRecord]:
    entries: Any = admin.xrange(key_space(namespace).records_stream())
    return stream_records(entries)


def _finished(admin: redis.Redis, envelope: RunEnvelope, timeout: float = 60) -> RunRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in _records(admin, envelope.namespace):
            if record.run_id == envelope.run_id and record.state in (
                RunState.SUCCEEDED,
                RunState.FAILED,
            ):
                return record
        time.sleep(0.1)
    raise AssertionError(f"{envelope.run_id} did not finish: {_records(admin, envelope.namespace)}")


def _foreign_keys(admin: redis.Redis, namespace: str) -> list[str]:
    """Every key of this Redis outside the namespace's key space."""
    mine = keys.tenant_prefix(namespace)
    found = (key.decode() for key in admin.scan_iter(count=1000))
    return sorted(key for key in found if not key.startswith(mine))


def test_workers_of_two_namespaces_are_confined_to_their_own_keys(
    provisioned: Any, admin: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    _credentials, secrets, pools = provisioned
    supervisor = Supervisor(tmp_path / "logs")
    app = create_app(WorkerSettings(broker_url=redis_url), main="beat-like")
    # Operator's and beat's keys exist in the same Redis: redbeat entries, the lock,
    # the root stream and the provisioner's own records.
    planted = {"redbeat:tenancy-test/st": "definition", "redbeat-tenancy-test::lock": "beat"}
    admin.hset("redbeat:tenancy-test/st", "definition", "{}")
    admin.set("redbeat-tenancy-test::lock", "beat")
    root_entry = admin.xadd("beatkeeper:runs", {"notice": "{}"})  # the root stream exists
    try:
        for pool in pools:
            workers = Workers(
                supervisor, secrets.url(pool), tmp_path, queue_name(pool.namespace, pool.name)
            )
            workers.start(f"w-{pool.namespace}", BEATKEEPER_TENANT=pool.namespace)
        # Each namespace's workers run its runs, under its own user, in its own key space.
        for pool in pools:
            counter = f"{keys.tenant_prefix(pool.namespace)}count"
            record = _finished(admin, _run(app, pool, "bk_test.work", key=counter))
            assert record.state is RunState.SUCCEEDED, record
            assert admin.get(counter) == b"1"
            probe = BacklogProbe(admin, app)
            queue = queue_name(pool.namespace, pool.name)
            space = key_space(pool.namespace)
            assert "bk_test.reach" in (probe.registered(queue, space) or ())
            assert probe.measure(queue, dt.datetime.now(dt.UTC), space).queued == 0
            probe.close()
        # Task code of one namespace, with its own credential, is refused every key and
        # channel of the other and every key of the operator and beat.
        for mine, theirs in (pools, pools[::-1]):
            foreign = _foreign_keys(admin, mine.namespace)
            assert any(key.startswith(keys.tenant_prefix(theirs.namespace)) for key in foreign)
            assert {*planted, "beatkeeper:runs"} <= set(foreign)
            assert any(key.startswith(keys.TENANCY_STATE_PREFIX) for key in foreign)
            other = keys.tenant_prefix(theirs.namespace)
            channels = [f"{other}/0.celeryev/worker.heartbeat", "/0.celeryev/worker.heartbeat"]
            record = _finished(
                admin, _run(app, mine, "bk_test.reach", keys=foreign, channels=channels)
            )
            assert record.state is RunState.SUCCEEDED, record.message
        # Remote control (pidbox) works inside a key space, and reaches only its workers.
        tenant_app = create_app(
            WorkerSettings(broker_url=secrets.url(pools[0]), tenant=pools[0].namespace)
        )
        replies = tenant_app.control.ping(timeout=3)
        hosts = [name for reply in replies for name in reply]
        assert len(hosts) == 1, hosts
        assert hosts[0].startswith(f"w-{pools[0].namespace}-")
        tenant_app.close()
    finally:
        supervisor.stop_all(grace=15)
        app.close()
        admin.delete(*planted)
        admin.xdel("beatkeeper:runs", root_entry)


def _login(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


def test_rotation_keeps_the_old_password_for_the_grace_period_then_drops_it(
    provisioned: Any, admin: redis.Redis, clock: Clock
) -> None:
    credentials, secrets, pools = provisioned
    pool = pools[0]
    old = secrets.url(pool)
    assert credentials.ensure(pool, "rotate-1") == 2
    new = secrets.url(pool)
    assert new != old
    assert _login(new)
    assert _login(old)  # pods still starting with the old Secret get in
    assert credentials.ensure(pool, "rotate-1") == 2  # once per token
    clock.now += 31
    assert credentials.ensure(pool) == 2
    assert not _login(old)
    assert _login(new)


def test_a_user_redis_forgot_is_provisioned_again_within_a_check_period(
    provisioned: Any, admin: redis.Redis, clock: Clock
) -> None:
    credentials, secrets, pools = provisioned
    pool = pools[0]
    admin.acl_deluser(tenancy.user_name(pool.namespace))  # as a restarted Redis without ACL file
    assert not _login(secrets.url(pool))
    clock.now += 11
    assert credentials.ensure(pool) == 1
    assert _login(secrets.url(pool))


def test_the_user_goes_with_the_namespaces_last_pool(provisioned: Any, admin: redis.Redis) -> None:
    credentials, secrets, pools = provisioned
    pool = pools[0]
    second = PoolRef(pool.namespace, "second", str(uuid.uuid4()))
    credentials.ensure(second)
    credentials.release(pool.namespace, pool.uid)
    assert not _login(secrets.url(pool))  # the first pool's password went with it
    assert _login(secrets.url(second))
    credentials.collect({(second.namespace, "some-other-uid")})  # the second is gone too
    assert admin.acl_getuser(tenancy.user_name(pool.namespace)) is None
    assert not admin.exists(TenantCredentials.state_key(pool.namespace))
