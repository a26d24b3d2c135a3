"""The threads pool: what Beatkeeper enforces itself because Celery's threads pool does not.

Celery applies no time limits to the threads pool; the lease keeper raises the
soft limit inside the run's thread, and at the hard limit records the run
`Failed` and abandons the thread (it cannot be killed).
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from worker_helpers import Runs, Workers

from beatkeeper_core.contract import ConcurrencyPolicy, RetryPolicy, RunState

pytestmark = pytest.mark.timeout(120)

R = RunState


@pytest.fixture(scope="module")
def runs(module_workers: Workers, module_runs: Runs) -> Runs:
    module_workers.start("threads", BEATKEEPER_WORKER_POOL="threads")
    return module_runs


def test_retries_then_succeeds(runs: Runs) -> None:
    key = runs.key("flaky")
    envelope = runs.envelope(
        kwargs={"key": key, "fail_times": 1},
        retry=RetryPolicy(max_retries=2, initial_seconds=0.2),
    )
    runs.publish(envelope)
    records = runs.wait_for(envelope.run_id, R.SUCCEEDED)
    assert [(r.state, r.attempt) for r in records][-3:] == [
        (R.RETRYING, 1),
        (R.RUNNING, 2),
        (R.SUCCEEDED, 2),
    ]
    assert runs.count(key) == 2


def test_soft_limit_is_raised_in_the_thread(runs: Runs) -> None:
    key = runs.key("soft")
    envelope = runs.envelope(kwargs={"key": key, "seconds": 30}, soft_seconds=0.5)
    runs.publish(envelope)
    records = runs.wait_for(envelope.run_id, R.FAILED, timeout=15)
    assert records[-1].reason == "TimeLimitExceeded"
    assert "SoftTimeLimitExceeded" in records[-1].message
    assert 0.4 <= (records[-1].time - records[1].time).total_seconds() < 6
    assert runs.client.exists(f"{key}:ended")


def test_hard_limit_fails_the_run_and_abandons_the_thread(runs: Runs) -> None:
    key = runs.key("hard")
    envelope = runs.envelope(
        kwargs={"key": key, "seconds": 30, "ignore_soft": True},
        soft_seconds=0.3,
        hard_seconds=1.0,
    )
    runs.publish(envelope)
    records = runs.wait_for(envelope.run_id, R.FAILED, timeout=15)
    assert records[-1].reason == "TimeLimitExceeded"
    assert "abandoned" in records[-1].message
    assert 0.9 <= (records[-1].time - records[1].time).total_seconds() < 6
    time.sleep(2.5)
    assert runs.count(key) == 1
    assert runs.count(f"{key}:done") == 0
    assert [r.state for r in runs.records(envelope.run_id)] == [R.PENDING, R.RUNNING, R.FAILED]


def test_replace_interrupts_the_old_thread(runs: Runs) -> None:
    old_key, new_key = runs.key("old"), runs.key("new")
    slot = dt.datetime.now(dt.UTC)
    replace = {"name": "replace", "concurrency_policy": ConcurrencyPolicy.REPLACE}
    old = runs.envelope(kwargs={"key": old_key, "seconds": 60}, slot=slot, **replace)
    runs.publish(old)
    runs.wait_for(old.run_id, R.RUNNING)
    new = runs.envelope(kwargs={"key": new_key}, slot=slot + dt.timedelta(seconds=1), **replace)
    runs.publish(new)
    runs.wait_for(new.run_id, R.SUCCEEDED)
    assert runs.wait_for(old.run_id, R.FAILED)[-1].reason == "Replaced"
    runs.wait_until(lambda: bool(runs.client.exists(f"{old_key}:ended")), 10, "never stopped")
    assert runs.count(f"{old_key}:done") == 0
