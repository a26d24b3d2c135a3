"""A stock Celery worker consumes what both publish paths put on a queue.

The worker is a plain `Celery()` app with no Beatkeeper code (its module is written
out below and run as `celery -A stock_consumer_app worker`, prefork pool, JSON only),
with one task registered as `beatkeeper.run` that records what it received into a
Redis list. Runs are published into the root key space two ways:

- the batch adapter: `prepare_runs` + `push_runs` on a `RunRegistry` (what beat does);
- the library path: `publish_run`, i.e. `app.send_task` (the worker's sweeper).

Per run, for both: received exactly once, not as a redelivery; args equal to
`envelope.model_dump(mode="json", exclude_defaults=True)`; the task id is
`envelope.celery_task_id`; the RunPolicy's limits arrive as `request.timelimit`
(`[hard, soft]`) and the prefork pool enforces the soft one; the message is acked
(the queue list is empty and kombu's `unacked` hash holds nothing for the queue).
The two paths' raw broker messages are also compared field by field.

RunEnvelope has no priority field, so no run has a non-default priority: every
message goes out at priority 0 (kombu's list named after the queue), which the
worker's `delivery_info` shows.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from worker_helpers import Workers

from beatkeeper_core import keys
from beatkeeper_core.broker import celery_app
from beatkeeper_core.contract import ENTRY_TASK, RunEnvelope, RunPolicy, TaskCall
from beatkeeper_core.publish import prepare_runs, publish_run, push_runs
from beatkeeper_core.runs import RunRegistry
from beatkeeper_core.settings import RedisTls
from beatkeeper_devenv.processes import Component, wait_until

pytestmark = pytest.mark.timeout(120)

# Everything the stock worker runs: Celery, redis-py and the standard library.
STOCK_APP = '''
"""A stock Celery app: one task under Beatkeeper's entry task name, which records its request."""

import json
import os
import sys
import time

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready

URL = os.environ["STOCK_BROKER_URL"]
RECEIVED = os.environ["STOCK_RECEIVED_KEY"]
READY = os.environ["STOCK_READY_KEY"]

app = Celery("stock")
app.conf.update(broker_url=URL, task_serializer="json", accept_content=["json"])
client = redis.Redis.from_url(URL)


@app.task(name="beatkeeper.run", bind=True)
def run(self, envelope):
    request = self.request
    record = {
        "id": request.id,
        "args": list(request.args),
        "kwargs": dict(request.kwargs or {}),
        "timelimit": list(request.timelimit) if request.timelimit else None,
        "delivery_info": dict(request.delivery_info or {}),
        "beatkeeper_modules": sorted(m for m in sys.modules if m.startswith("beatkeeper")),
        "soft_limit_raised": False,
    }
    seconds = envelope.get("task", {}).get("kwargs", {}).get("sleep", 0)
    if seconds:
        try:
            time.sleep(seconds)
        except SoftTimeLimitExceeded:
            record["soft_limit_raised"] = True
    client.rpush(RECEIVED, json.dumps(record))


@worker_ready.connect
def ready(**_):
    client.set(READY, "1")
'''


@dataclass
class StockWorker:
    component: Component
    queue: str
    received_key: str
    client: redis.Redis

    def received(self) -> list[dict[str, Any]]:
        items: list[bytes] = self.client.lrange(self.received_key, 0, -1)  # type: ignore[assignment]
        return [json.loads(item) for item in items]

    def unacked_for_queue(self) -> list[str]:
        """Delivery tags kombu holds as delivered-but-unacked for this queue."""
        raw: dict[bytes, bytes] = self.client.hgetall("unacked")  # type: ignore[assignment]
        return [
            tag.decode()
            for tag, value in raw.items()
            if json.loads(value)[2] == self.queue  # [message, exchange, routing_key]
        ]

    def idle(self) -> bool:
        return self.client.llen(self.queue) == 0 and not self.unacked_for_queue()


def wait_for(
    ready: Callable[[], bool], timeout: float, why: str, seen: Callable[[], object] = str
) -> None:
    """Poll `ready` until true; on timeout say why, and what `seen` shows by then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise AssertionError(f"{why} within {timeout} s; seen: {seen()}")


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def stock_worker(module_workers: Workers, client: redis.Redis) -> StockWorker:
    """One stock `celery worker` on the module's queue; module_workers stops it."""
    app_dir = module_workers.tmp / "stock-app"
    app_dir.mkdir()
    (app_dir / "stock_consumer_app.py").write_text(STOCK_APP)
    label = uuid.uuid4().hex[:8]
    received_key, ready_key = f"bk-test:stock:{label}:received", f"bk-test:stock:{label}:ready"
    env = {
        **os.environ,
        # Only the stock app's folder on the path; the virtualenv provides Celery and redis.
        "PYTHONPATH": str(app_dir),
        "STOCK_BROKER_URL": module_workers.redis_url,
        "STOCK_RECEIVED_KEY": received_key,
        "STOCK_READY_KEY": ready_key,
    }
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "stock_consumer_app",
        "worker",
        "-Q",
        module_workers.queue,
        "--pool=prefork",
        "--concurrency=2",
        "--loglevel=INFO",
        f"--hostname=stock-{label}@%h",
    ]
    component = module_workers.supervisor.start(f"stock-{label}", argv, env=env, cwd=app_dir)
    wait_until(component, lambda: bool(client.exists(ready_key)), timeout=60)
    return StockWorker(component, module_workers.queue, received_key, client)


@pytest.fixture(scope="module")
def publisher(redis_url: str) -> Iterator[Any]:
    app = celery_app(redis_url, RedisTls(), main="bk-test-publisher")
    yield app
    app.close()


def envelopes(label: str) -> list[RunEnvelope]:
    """Runs that exercise what the message carries: defaults only, args and kwargs,
    both limits, a soft limit the task overruns, a run-now, a second attempt."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def one(name: str, task: TaskCall, policy: RunPolicy, **extra: Any) -> RunEnvelope:
        return RunEnvelope.for_slot("t", f"{label}-{name}", now, task, policy, **extra)

    return [
        one("plain", TaskCall(name="stock.plain"), RunPolicy()),
        one(
            "limits",
            TaskCall(name="stock.args", args=[1, "two", None], kwargs={"k": {"n": [3]}}),
            RunPolicy(soft_seconds=2.5, hard_seconds=7.5),
        ),
        one(
            "overrun",
            TaskCall(name="stock.sleep", kwargs={"sleep": 30}),
            RunPolicy(soft_seconds=0.5, hard_seconds=60),
        ),
        one(
            "now",
            TaskCall(name="stock.plain"),
            RunPolicy(hard_seconds=9),
            trigger="run-now",
            tag="now-1234abcd",
            token="tok",
        ),
        one("second", TaskCall(name="stock.plain"), RunPolicy(soft_seconds=4)).next_attempt(),
    ]


def expected_timelimit(policy: RunPolicy) -> list[float | None]:
    return [policy.hard_seconds, policy.soft_seconds]


@pytest.mark.parametrize("path", ["adapter", "library"])
def test_stock_worker_consumes_each_run_once_as_published(
    path: str, stock_worker: StockWorker, publisher: Any, client: redis.Redis
) -> None:
    registry = RunRegistry(client)
    queue = stock_worker.queue
    runs = envelopes(f"{path}-{uuid.uuid4().hex[:6]}")
    now = dt.datetime.now(dt.UTC)
    if path == "adapter":
        fresh = push_runs(registry, prepare_runs(publisher, [(e, queue) for e in runs], now))
    else:
        fresh = [publish_run(publisher, e, queue, registry=registry, now=now) for e in runs]
    assert fresh == [True] * len(runs)
    # The registry side of the publish: each run Pending (a stock worker claims nothing).
    for envelope in runs:
        assert client.hget(keys.run_key(envelope.run_id), "state") == b"Pending"

    ids = {envelope.celery_task_id for envelope in runs}

    def mine() -> list[dict[str, Any]]:
        return [item for item in stock_worker.received() if item["id"] in ids]

    wait_for(
        lambda: len(mine()) >= len(runs),
        30,
        f"{len(runs)} runs received",
        lambda: [(item["id"], item["timelimit"]) for item in mine()],
    )
    wait_for(
        stock_worker.idle,
        10,
        "queue drained and every delivery acked",
        lambda: (client.llen(queue), stock_worker.unacked_for_queue()),
    )
    received = mine()
    assert sorted(item["id"] for item in received) == sorted(ids)  # each exactly once
    by_id = {item["id"]: item for item in received}
    for envelope in runs:
        item = by_id[envelope.celery_task_id]
        assert item["args"] == [envelope.model_dump(mode="json", exclude_defaults=True)]
        assert item["kwargs"] == {}
        assert item["timelimit"] == expected_timelimit(envelope.policy)
        assert item["delivery_info"]["routing_key"] == queue
        assert item["delivery_info"]["priority"] == 0
        assert item["delivery_info"]["redelivered"] is False
        assert item["beatkeeper_modules"] == []  # the consumer really is stock
    overrun = by_id[runs[2].celery_task_id]
    assert overrun["soft_limit_raised"], "the prefork pool enforced the soft limit"
    assert not by_id[runs[0].celery_task_id]["soft_limit_raised"]
    assert client.llen(queue) == 0
    assert stock_worker.unacked_for_queue() == []
    assert len(mine()) == len(runs)  # still once each, after the acks


def decoded(raw: bytes | str) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(flat(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def test_adapter_message_is_send_tasks_message_but_for_known_fields(
    publisher: Any, client: redis.Redis
) -> None:
    """The two paths' raw messages (queues nobody consumes), field by field."""
    label = uuid.uuid4().hex[:6]
    lib_queue, batch_queue = f"bk-test.stock.{label}.lib", f"bk-test.stock.{label}.batch"
    registry = RunRegistry(client)
    now = dt.datetime.now(dt.UTC)
    for envelope in envelopes(f"wire-{label}"):
        publish_run(publisher, envelope, lib_queue, registry=registry, now=now)
        # Same envelope, another queue: the run id is known, so the entry is not new.
        push_runs(registry, prepare_runs(publisher, [(envelope, batch_queue)], now))
        library = flat(decoded(client.rpop(lib_queue)))  # type: ignore[arg-type]
        adapter = flat(decoded(client.rpop(batch_queue)))  # type: ignore[arg-type]
        library["properties.delivery_info.routing_key"] = batch_queue
        differing = {
            key
            for key in library.keys() | adapter.keys()
            if library.get(key, "<missing>") != adapter.get(key, "<missing>")
        }
        # Per message: its delivery tag. Deliberately: argsrepr names the run id only.
        # ignore_result is None from send_task, False from as_task_v2's default; both
        # falsy, the worker reads them the same.
        assert differing <= {
            "properties.delivery_tag",
            "headers.argsrepr",
            "headers.ignore_result",
        }, {key: (library.get(key), adapter.get(key)) for key in differing}
        assert adapter["headers.argsrepr"] == f"[{envelope.run_id!r}]"
        assert adapter["headers.task"] == library["headers.task"] == ENTRY_TASK
        assert not adapter["headers.ignore_result"]
        assert not library["headers.ignore_result"]
        assert adapter["body"] == library["body"]
    client.delete(*(f"_kombu.{kind}.{lib_queue}" for kind in ("binding", "binding_permanent")))
