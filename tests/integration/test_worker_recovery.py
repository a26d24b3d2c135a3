"""Workers that die, shut down, or outlive the broker's visibility timeout.

Each test starts its own workers, because each needs a process to kill or its
own broker settings.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from worker_helpers import Runs, Workers

from beatkeeper_core import keys
from beatkeeper_core.contract import RetryPolicy, RunState
from beatkeeper_core.runs import RunRegistry
from beatkeeper_worker.retries import promote_due

pytestmark = pytest.mark.timeout(120)

R = RunState


def test_sigkilled_worker_run_is_redelivered_elsewhere_and_recorded_once(
    workers: Workers, runs: Runs
) -> None:
    first = workers.start("first", BEATKEEPER_WORKER_CONCURRENCY="1")
    key = runs.key("killed")
    envelope = runs.envelope(kwargs={"key": key, "seconds": 2})
    runs.publish(envelope)
    runs.wait_until(lambda: runs.count(key) == 1, 20, "the run never started")
    workers.kill(first)
    killed_at = time.monotonic()
    workers.start("second")
    runs.wait_until(lambda: runs.count(key) == 2, 60, "the run was not started again")
    assert time.monotonic() - killed_at < 60
    records = runs.wait_for(envelope.run_id, R.SUCCEEDED)
    assert [r.state for r in records] == [R.PENDING, R.RUNNING, R.RUNNING, R.SUCCEEDED]
    assert records[1].worker != records[2].worker
    time.sleep(2.5)  # a lease period: nothing executes it a third time
    assert runs.count(key) == 2
    assert runs.count(f"{key}:done") == 1
    assert [r.state for r in runs.records(envelope.run_id)].count(R.SUCCEEDED) == 1


def test_long_run_and_long_retry_delay_outlast_the_visibility_timeout_once(
    workers: Workers, runs: Runs
) -> None:
    # kombu restores unacked messages older than 2 s, checking every 0.5 s.
    workers.start(
        BEATKEEPER_BROKER_VISIBILITY_TIMEOUT="2",
        BEATKEEPER_BROKER_RESTORE_INTERVAL="0.5",
    )
    long_key, retry_key = runs.key("long"), runs.key("retry")
    long_run = runs.envelope(kwargs={"key": long_key, "seconds": 6})
    retried = runs.envelope(
        kwargs={"key": retry_key, "fail_times": 1},
        retry=RetryPolicy(max_retries=1, initial_seconds=5, jitter=False),
    )
    runs.publish(long_run)
    runs.publish(retried)
    long_records = runs.wait_for(long_run.run_id, R.SUCCEEDED)
    retry_records = runs.wait_for(retried.run_id, R.SUCCEEDED)
    # The broker did redeliver the long run while it ran; the claim dropped it.
    assert runs.dropped().get("dropped_leased", 0) >= 1
    assert runs.count(long_key) == 1
    assert [r.state for r in long_records] == [R.PENDING, R.RUNNING, R.SUCCEEDED]
    assert runs.count(retry_key) == 2
    assert [(r.state, r.attempt) for r in retry_records] == [
        (R.PENDING, 1),
        (R.RUNNING, 1),
        (R.RETRYING, 1),
        (R.RUNNING, 2),
        (R.SUCCEEDED, 2),
    ]
    waited = (retry_records[3].time - retry_records[2].time).total_seconds()
    assert waited >= 5
    time.sleep(2.5)  # past another visibility timeout: still once per attempt
    assert (runs.count(long_key), runs.count(retry_key)) == (1, 2)


def test_sigterm_is_a_warm_shutdown_running_task_finishes(workers: Workers, runs: Runs) -> None:
    worker = workers.start()
    key = runs.key("warm")
    envelope = runs.envelope(kwargs={"key": key, "seconds": 2})
    runs.publish(envelope)
    runs.wait_until(lambda: runs.count(key) == 1, 20, "the run never started")
    worker.popen.terminate()
    assert worker.popen.wait(timeout=30) == 0
    # The liveness probe would not have killed it while it drained.
    assert (workers.tmp / f"{worker.name}.alive").read_text().startswith("draining")
    records = runs.records(envelope.run_id)
    assert [r.state for r in records] == [R.PENDING, R.RUNNING, R.SUCCEEDED]
    assert runs.count(f"{key}:done") == 1


def probe(path: str, max_age: float) -> int:
    argv = [sys.executable, "-m", "beatkeeper_worker.liveness", "--max-age", str(max_age)]
    return subprocess.run([*argv, "--file", path], capture_output=True, check=False).returncode


def test_liveness_file_is_fresh_while_running_and_stale_once_wedged(workers: Workers) -> None:
    worker = workers.start()
    path = workers.tmp / f"{worker.name}.alive"
    first = path.stat().st_mtime
    time.sleep(1.2)
    assert path.stat().st_mtime > first
    assert probe(str(path), 2) == 0
    workers.kill(worker)  # as good as a wedged event loop: no more touches
    time.sleep(2.2)
    assert probe(str(path), 2) == 1


# Production timings (15 s lease, 5 s renewal, 1 s sweep; 30 s visibility timeout).
DEFAULTS = {
    "BEATKEEPER_LEASE_SECONDS": "15",
    "BEATKEEPER_LEASE_RENEW_SECONDS": "5",
    "BEATKEEPER_SWEEP_SECONDS": "1",
}


@pytest.mark.parametrize(
    ("pool", "concurrency", "prefetch"),
    [("prefork", "1", "4"), ("threads", "2", "3")],
    ids=["prefork-c1-p4", "threads-c2-p3"],
)
def test_every_run_a_killed_worker_held_runs_elsewhere_within_60s_once(
    workers: Workers, runs: Runs, pool: str, concurrency: str, prefetch: str
) -> None:
    """Running, claimed and prefetched-not-started runs of a SIGKILLed worker all run once."""
    first = workers.start(
        "first",
        BEATKEEPER_WORKER_POOL=pool,
        BEATKEEPER_WORKER_CONCURRENCY=concurrency,
        BEATKEEPER_WORKER_PREFETCH=prefetch,
        **DEFAULTS,
    )
    keys_ = [runs.key(f"run{i}") for i in range(5)]
    envelopes = [runs.envelope(kwargs={"key": key, "seconds": 3}) for key in keys_]
    for envelope in envelopes:
        runs.publish(envelope)
    runs.wait_until(lambda: runs.count(keys_[0]) == 1, 30, "the first run never started")
    held = runs.client.hlen("unacked")
    assert held >= 2, "the worker prefetched more than it runs"
    workers.kill(first)
    killed_at = time.monotonic()
    workers.start("second", **DEFAULTS)

    def all_done() -> bool:
        return all(runs.count(f"{key}:done") >= 1 for key in keys_)

    runs.wait_until(all_done, 60, "some runs of the killed worker never ran")
    assert time.monotonic() - killed_at < 60
    time.sleep(1)
    assert [runs.count(f"{key}:done") for key in keys_] == [1] * 5
    for envelope in envelopes:
        states = [r.state for r in runs.records(envelope.run_id)]
        assert states.count(R.SUCCEEDED) == 1, states


def test_a_message_lost_on_its_way_to_a_worker_still_runs_once(
    workers: Workers, runs: Runs
) -> None:
    """kombu's BRPOP pops a message before the worker has it (kombu#305): a connection
    cut at that moment loses it. The run stays Pending, unclaimed, and is republished."""
    kept_key, lost_key = runs.key("kept"), runs.key("lost")
    kept = runs.envelope(kwargs={"key": kept_key})
    lost = runs.envelope(kwargs={"key": lost_key})
    runs.publish(lost)
    runs.publish(kept)
    # What the lost reply did: the message is gone from the queue, delivered to no one.
    assert runs.client.rpop(runs.queue) is not None
    assert runs.client.llen(runs.queue) == 1
    workers.start(BEATKEEPER_UNCLAIMED_SECONDS="2")
    records = runs.wait_for(lost.run_id, R.SUCCEEDED)
    assert [r.state for r in records] == [R.PENDING, R.RUNNING, R.SUCCEEDED]
    assert (records[1].time - records[0].time).total_seconds() >= 2
    runs.wait_for(kept.run_id, R.SUCCEEDED)
    assert (runs.count(lost_key), runs.count(kept_key)) == (1, 1)
    # Claimed runs leave the unclaimed index; nothing is republished again.
    runs.wait_until(
        lambda: runs.client.zcard(keys.unclaimed_key(runs.queue)) == 0, 10, "index not emptied"
    )
    assert runs.client.hget(keys.run_key(kept.run_id), "republished") is None


def test_a_promoted_retry_whose_message_is_lost_still_runs_once(
    workers: Workers, runs: Runs
) -> None:
    key = runs.key("retry-lost")
    envelope = runs.envelope(
        kwargs={"key": key, "fail_times": 1},
        retry=RetryPolicy(max_retries=1, initial_seconds=1, jitter=False),
    )
    first = workers.start("first")
    runs.publish(envelope)
    runs.wait_for(envelope.run_id, R.RETRYING)
    first.popen.terminate()  # warm shutdown: nobody sweeps the queue now
    assert first.popen.wait(timeout=30) == 0
    workers.supervisor.components.remove(first)
    registry = RunRegistry(
        runs.client, lease_seconds=15, retention_seconds=3600, records_maxlen=100_000
    )
    # A sweeper promotes the due retry, and its message is lost on the way.
    runs.wait_until(lambda: promote_due(registry, runs.queue, lambda _: None) == 1, 10, "not due")
    assert runs.client.zcard(keys.retries_key(runs.queue)) == 0
    workers.start("second", BEATKEEPER_UNCLAIMED_SECONDS="2")
    records = runs.wait_for(envelope.run_id, R.SUCCEEDED)
    assert [(r.state, r.attempt) for r in records] == [
        (R.PENDING, 1),
        (R.RUNNING, 1),
        (R.RETRYING, 1),
        (R.RUNNING, 2),
        (R.SUCCEEDED, 2),
    ]
    assert runs.count(key) == 2
