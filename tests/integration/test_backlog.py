"""The backlog probe against real Redis, kombu messages and a real worker's reservations."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Iterator

import pytest
import redis
from worker_helpers import Runs, Workers

from beatkeeper.operator.autoscaler import BacklogSample, measure, reserved
from beatkeeper.operator.backlog import BacklogProbe
from beatkeeper_core import keys


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(redis_url)
    yield found
    found.close()


@pytest.fixture
def probe(client: redis.Redis, runs: Runs) -> Iterator[BacklogProbe]:
    found = BacklogProbe(client, runs.app, tally_max_age=0)
    yield found
    found.close()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_queued_counts_every_priority_list(runs: Runs, probe: BacklogProbe) -> None:
    queue = runs.queue
    for priority in (None, 0, 3, 5, 9):
        options = {} if priority is None else {"priority": priority}
        runs.app.send_task("bk_test.work", args=["k"], queue=queue, **options)
    lists = {key.decode() for key in runs.client.keys(f"{queue}*")}
    # kombu keeps priorities 3-5 and 6-9 in their own lists, beside the queue's own.
    assert lists == {queue, f"{queue}\x06\x163", f"{queue}\x06\x169"}
    found = probe.measure(queue, now())
    assert found == BacklogSample(queued=5, unacked=0, active=0)


def test_reserved_and_active_from_a_real_worker(
    workers: Workers, runs: Runs, probe: BacklogProbe
) -> None:
    # One process with prefetch 2: one run executes, one waits reserved in the worker.
    workers.start(BEATKEEPER_WORKER_CONCURRENCY="1", BEATKEEPER_WORKER_PREFETCH="2")
    for _ in range(4):
        runs.publish(runs.envelope(kwargs={"key": runs.key("n"), "seconds": 4}))

    def settled() -> BacklogSample | None:
        found = probe.measure(runs.queue, now())
        return found if (found.active, found.unacked) == (1, 2) else None

    deadline = time.monotonic() + 10
    while (found := settled()) is None:
        assert time.monotonic() < deadline, probe.measure(runs.queue, now())
        time.sleep(0.05)
    assert found.queued == 2
    assert reserved(found, pods=1, concurrency=1, prefetch=2) == 1
    assert measure(found, pods=1, concurrency=1, prefetch=2) == 4
    # What the probe counted is what kombu holds for this queue.
    entries = [json.loads(raw) for raw in runs.client.hvals("unacked")]
    assert sum(1 for entry in entries if entry[-1] == runs.queue) == 2


def test_other_queues_are_not_counted_and_the_tally_is_shared(
    client: redis.Redis, runs: Runs
) -> None:
    other = f"{runs.queue}-other"
    client.hset("unacked", f"tag-{other}", json.dumps([{"body": "x"}, "", other]))
    ticks = iter([0.0, 0.1, 0.2, 5.0])
    probe = BacklogProbe(client, runs.app, tally_max_age=1, monotonic=lambda: next(ticks))
    try:
        assert probe.measure(runs.queue, now()).unacked == 0
        assert probe.measure(other, now()).unacked == 1
        client.hset("unacked", f"tag2-{other}", json.dumps([{"body": "y"}, "", other]))
        assert probe.measure(other, now()).unacked == 1  # within tally_max_age: not re-read
    finally:
        probe.close()
        client.hdel("unacked", f"tag-{other}", f"tag2-{other}")


def test_due_retries_count_and_the_next_one_is_known(
    client: redis.Redis, runs: Runs, probe: BacklogProbe
) -> None:
    at = now()
    retries = keys.retries_key(runs.queue)
    due = runs.envelope(name="due")
    later = runs.envelope(name="later")
    client.zadd(retries, {due.model_dump_json(): (at.timestamp() - 1) * 1000})
    client.zadd(retries, {later.model_dump_json(): (at.timestamp() + 30) * 1000})
    found = probe.measure(runs.queue, at)
    assert (found.retries_due, found.queued) == (1, 0)
    assert found.next_retry is not None
    assert found.next_retry.what == f"retry of {due.run_id}"
    assert abs((found.next_retry.at - at).total_seconds() + 1) < 0.01


def test_a_dead_workers_prefetched_runs_wake_a_pool_at_zero(
    workers: Workers, runs: Runs, probe: BacklogProbe
) -> None:
    """Delivered to a worker that died: not in the queue, not running, still backlog."""
    worker = workers.start(BEATKEEPER_WORKER_CONCURRENCY="1", BEATKEEPER_WORKER_PREFETCH="4")
    for _ in range(4):  # all of them delivered: one running, three prefetched
        runs.publish(runs.envelope(kwargs={"key": runs.key("held"), "seconds": 30}))
    deadline = time.monotonic() + 15
    while probe.measure(runs.queue, now()).queued:
        assert time.monotonic() < deadline, "the worker never took the runs"
        time.sleep(0.05)
    workers.kill(worker)
    found = probe.measure(runs.queue, now())
    assert found.queued == 0
    assert found.unacked >= 4
    # No pod is left (the pool scaled to zero, or its only pod died): the runs still
    # count, so the autoscaler brings a worker back for them.
    assert measure(found, pods=0, concurrency=1, prefetch=4) >= 4


def test_a_worker_announces_the_tasks_it_registers_while_it_runs(
    workers: Workers, runs: Runs, probe: BacklogProbe
) -> None:
    assert probe.registered(runs.queue) is None  # no worker yet: not known
    first = workers.start("a")
    second = workers.start("b", BEATKEEPER_TASK_MODULES="")
    names = probe.registered(runs.queue)
    assert names is not None
    assert {"bk_test.work", "bk_test.block", "beatkeeper.http"} <= set(names)  # the union
    assert not any(name.startswith("celery.") or name == "beatkeeper.run" for name in names)
    assert len(runs.client.hkeys(keys.registered_key(runs.queue))) == 2
    workers.supervisor.stop(first, grace=15)
    assert runs.client.hkeys(keys.registered_key(runs.queue)) == [
        f"{second.name}@{socket.gethostname()}".encode()
    ]  # a stopped worker withdraws its names
    left = probe.registered(runs.queue)
    assert left is not None
    assert "bk_test.work" not in left
    assert "beatkeeper.http" in left
    assert 0 < runs.client.ttl(keys.registered_key(runs.queue)) <= keys.REGISTERED_TTL_SECONDS
