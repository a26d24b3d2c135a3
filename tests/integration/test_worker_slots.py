"""Slots keep their order and meaning; delete and cancel mean what they say.

Real workers against the session's Redis: an older slot delivered again, or
recovered after its worker died, never stops, skips or runs beside a newer run
under Replace or Forbid, and a recovered run is never recorded Skipped. After a
ScheduledTask is deleted (the operator's mark in the registry) none of its
queued runs or waiting retries start, while a running one finishes. A cancel
fails the object's active runs, running or waiting for a retry. A newer
writer's envelope (a higher version, fields this worker does not know) runs.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from worker_helpers import Runs, Workers, make_runs

from beatkeeper_core import keys, records
from beatkeeper_core.contract import (
    ConcurrencyPolicy,
    RetryPolicy,
    RunEnvelope,
    RunState,
    object_key,
)
from beatkeeper_core.runs import RunRegistry

pytestmark = pytest.mark.timeout(120)

R = RunState


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> Workers:
    module_workers.start("slots")
    return module_workers


@pytest.fixture
def runs(module_runs: Runs, worker: Workers) -> Runs:
    return module_runs


def registry(runs: Runs) -> RunRegistry:
    return RunRegistry(runs.client, lease_seconds=2, retention_seconds=3600, records_maxlen=10_000)


def pair(
    runs: Runs, name: str, policy: ConcurrencyPolicy, older: dict, newer: dict
) -> tuple[RunEnvelope, RunEnvelope]:
    slot = dt.datetime.now(dt.UTC).replace(microsecond=0)
    common = {"name": name, "concurrency_policy": policy}
    first = runs.envelope(slot=slot, kwargs=older, **common)
    second = runs.envelope(slot=slot + dt.timedelta(seconds=10), kwargs=newer, **common)
    return first, second


@pytest.mark.parametrize("policy", [ConcurrencyPolicy.REPLACE, ConcurrencyPolicy.FORBID])
def test_an_older_slot_delivered_late_never_touches_the_newer_run(
    runs: Runs, policy: ConcurrencyPolicy
) -> None:
    old_key, new_key = runs.key(f"late-old-{policy.value}"), runs.key(f"late-new-{policy.value}")
    older, newer = pair(
        runs, f"late-{policy.value}", policy, {"key": old_key}, {"key": new_key, "seconds": 2}
    )
    runs.publish(newer)
    runs.wait_for(newer.run_id, R.RUNNING)
    runs.publish(older)  # the older slot arrives second (a restored delivery, say)
    superseded = runs.wait_for(older.run_id, R.SKIPPED)[-1]
    assert superseded.reason == "Superseded"
    runs.wait_for(newer.run_id, R.SUCCEEDED)
    assert [r.state for r in runs.records(newer.run_id)] == [R.PENDING, R.RUNNING, R.SUCCEEDED]
    assert (runs.count(old_key), runs.count(new_key)) == (0, 1)


def test_forbid_never_records_a_recovered_run_skipped(workers: Workers, redis_url: str) -> None:
    """The older run's worker dies; its newer slot comes while it awaits recovery."""
    own = make_runs(redis_url, workers.queue)  # the queue of these workers alone
    try:
        check_recovered_run_is_not_skipped(workers, next(own))
    finally:
        own.close()


def check_recovered_run_is_not_skipped(workers: Workers, runs: Runs) -> None:
    first = workers.start("dies", BEATKEEPER_WORKER_CONCURRENCY="1")
    old_key, new_key = runs.key("rec-old"), runs.key("rec-new")
    older, newer = pair(
        runs, "recovered", ConcurrencyPolicy.FORBID, {"key": old_key, "seconds": 3},
        {"key": new_key},
    )  # fmt: skip
    runs.publish(older)
    runs.wait_until(lambda: runs.count(old_key) == 1, 20, "the older run never started")
    workers.kill(first)
    time.sleep(2.5)  # past its lease: dead, not yet recovered (no sweeper runs now)
    workers.start("recovers")
    runs.publish(newer)
    runs.wait_for(older.run_id, R.SUCCEEDED, timeout=30)
    states = [r.state for r in runs.records(older.run_id)]
    assert R.SKIPPED not in states, states
    assert states.count(R.SUCCEEDED) == 1
    # The newer slot met the older one still in flight: Forbid skipped it, as it should.
    newer_states = [r.state for r in runs.wait_for(newer.run_id, R.SKIPPED)]
    assert newer_states == [R.PENDING, R.SKIPPED]


def test_after_deletion_no_queued_run_or_retry_starts_and_a_running_one_finishes(
    runs: Runs,
) -> None:
    name = "deleted"
    obj = object_key("t", name)
    slot = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=30)
    running_key, retry_key, queued_key = runs.key("d-run"), runs.key("d-retry"), runs.key("d-q")
    running = runs.envelope(name=name, slot=slot, kwargs={"key": running_key, "seconds": 3})
    retrying = runs.envelope(
        name=name,
        slot=slot + dt.timedelta(seconds=1),
        kwargs={"key": retry_key, "fail_times": 1},
        retry=RetryPolicy(max_retries=1, initial_seconds=2, jitter=False),
    )
    runs.publish(running)
    runs.publish(retrying)
    runs.wait_for(retrying.run_id, R.RETRYING)
    runs.wait_for(running.run_id, R.RUNNING)
    registry(runs).mark_deleted(obj, dt.datetime.now(dt.UTC))
    queued = runs.envelope(
        name=name, slot=slot + dt.timedelta(seconds=2), kwargs={"key": queued_key}
    )
    runs.publish(queued)
    runs.wait_for(running.run_id, R.SUCCEEDED)  # a running run finishes
    time.sleep(4)  # past the retry's delay: it was promoted and dropped
    assert runs.count(queued_key) == 0
    assert runs.count(retry_key) == 1  # only the first attempt ran
    assert runs.dropped().get("dropped_deleted", 0) >= 2
    assert [r.state for r in runs.records(queued.run_id)] == [R.PENDING]
    runs.client.delete(keys.deleted_key(obj))


def test_cancel_fails_the_active_runs_running_or_retrying(runs: Runs) -> None:
    name = "cancelled"
    obj = object_key("t", name)
    slot = dt.datetime.now(dt.UTC).replace(microsecond=0)
    long_key, retry_key = runs.key("c-long"), runs.key("c-retry")
    long_run = runs.envelope(
        "bk_test.block", name=name, slot=slot, kwargs={"key": long_key, "seconds": 30}
    )
    retrying = runs.envelope(
        name=name,
        slot=slot + dt.timedelta(seconds=1),
        kwargs={"key": retry_key, "fail_times": 5},
        retry=RetryPolicy(max_retries=5, initial_seconds=3, jitter=False),
    )
    runs.publish(long_run)
    runs.publish(retrying)
    runs.wait_for(long_run.run_id, R.RUNNING)
    runs.wait_for(retrying.run_id, R.RETRYING)
    reg = registry(runs)
    now = dt.datetime.now(dt.UTC)
    found = []
    for run, stored, state in reg.active(obj):
        assert stored is not None
        attempt = stored.attempt - 1 if state == R.RETRYING.value else stored.attempt
        envelope = stored.model_copy(update={"attempt": attempt})
        found.append((run, records.failed(envelope, now, "Cancelled", "cancelled by a test")))
    assert sorted(reg.cancel(found)) == sorted([long_run.run_id, retrying.run_id])
    for run in (long_run, retrying):
        last = runs.wait_for(run.run_id, R.FAILED)[-1]
        assert last.reason == "Cancelled"
    runs.wait_until(lambda: bool(runs.client.exists(f"{long_key}:ended")), 15, "never stopped")
    time.sleep(3.5)  # past the retry's delay: withdrawn, it never runs
    assert runs.count(retry_key) == 1
    assert runs.count(f"{long_key}:done") == 0
    assert reg.cancel(found) == []  # a second cancel finds nothing active


def test_a_newer_writers_envelope_runs(runs: Runs) -> None:
    key = runs.key("newer")
    envelope = runs.envelope(kwargs={"key": key})
    payload = json.loads(envelope.model_dump_json())
    payload.update(version=2, added_in_v2={"x": 1})
    payload["policy"]["added_in_v2"] = True
    runs.app.send_task(
        "beatkeeper.run", args=[payload], queue=runs.queue, task_id=envelope.celery_task_id
    )
    runs.wait_until(lambda: runs.count(f"{key}:done") == 1, 20, "the newer envelope never ran")
