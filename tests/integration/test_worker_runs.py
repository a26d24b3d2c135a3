"""One real prefork worker executes runs with their policy: retries, limits, deadlines,
concurrency policies, refusals and duplicate deliveries.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from worker_helpers import Runs, Workers, make_runs

from beatkeeper_core.contract import ConcurrencyPolicy, RetryPolicy, RunState

pytestmark = pytest.mark.timeout(120)

R = RunState


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> Workers:
    module_workers.start("runs")
    return module_workers


@pytest.fixture
def runs(module_runs: Runs, worker: Workers) -> Runs:
    return module_runs


def test_fails_twice_then_succeeds_with_backoff_inside_the_policy(runs: Runs) -> None:
    policy = RetryPolicy(max_retries=3, initial_seconds=0.3, factor=2, max_seconds=0.5)
    key = runs.key("flaky")
    envelope = runs.envelope(kwargs={"key": key, "fail_times": 2}, retry=policy)
    assert runs.publish(envelope)
    records = runs.wait_for(envelope.run_id, R.SUCCEEDED)
    assert [(r.state, r.attempt) for r in records] == [
        (R.PENDING, 1),
        (R.RUNNING, 1),
        (R.RETRYING, 1),
        (R.RUNNING, 2),
        (R.RETRYING, 2),
        (R.RUNNING, 3),
        (R.SUCCEEDED, 3),
    ]
    retrying = [r for r in records if r.state is R.RETRYING]
    for record in retrying:
        assert record.next_attempt_at is not None
        delay = (record.next_attempt_at - record.time).total_seconds()
        assert 0 <= delay <= policy.backoff_ceiling(record.attempt)
        assert "ValueError: boom" in record.message
    # Each attempt started no earlier than the retry said (records share one clock).
    for record in retrying:
        started = next(
            r for r in records if r.state is R.RUNNING and r.attempt == record.attempt + 1
        )
        assert record.next_attempt_at is not None
        assert started.time >= record.next_attempt_at - dt.timedelta(milliseconds=20)
    assert runs.count(key) == 3
    assert runs.count(f"{key}:done") == 1


def test_always_failing_ends_failed_after_max_retries_plus_one_attempts(runs: Runs) -> None:
    key = runs.key("broken")
    leak = "cannot reach redis://admin:hunter2@db.internal:6379/0 token=abc123"
    envelope = runs.envelope(
        kwargs={"key": key, "fail_times": 100, "message": leak},
        retry=RetryPolicy(max_retries=2, initial_seconds=0.1, factor=1, max_seconds=0.1),
    )
    runs.publish(envelope)
    records = runs.wait_for(envelope.run_id, R.FAILED)
    final = records[-1]
    assert final.state is R.FAILED
    assert final.attempt == 3
    assert final.reason == "RetriesExhausted"
    assert final.message.startswith("ValueError: cannot reach redis://***@db.internal")
    assert "hunter2" not in final.message
    assert "abc123" not in final.message
    assert [r.attempt for r in records if r.state is R.RETRYING] == [1, 2]
    assert runs.count(key) == 3


def test_hung_task_is_killed_at_the_hard_limit_and_not_run_again(runs: Runs) -> None:
    key = runs.key("hung")
    envelope = runs.envelope(
        kwargs={"key": key, "seconds": 60, "ignore_soft": True},
        soft_seconds=0.3,
        hard_seconds=1.0,
        retry=RetryPolicy(max_retries=3, initial_seconds=0.1),
    )
    runs.publish(envelope)
    records = runs.wait_for(envelope.run_id, R.FAILED, timeout=20)
    running, failed = records[1], records[-1]
    assert failed.reason == "TimeLimitExceeded"
    assert "hard time limit" in failed.message
    assert 0.9 <= (failed.time - running.time).total_seconds() < 6
    # Past a lease period and many sweeps: the killed run is neither retried
    # nor recovered, and the requeue that the kill could cause is dropped.
    time.sleep(3)
    assert runs.count(key) == 1
    assert runs.count(f"{key}:done") == 0
    assert [r.state for r in runs.records(envelope.run_id)] == [R.PENDING, R.RUNNING, R.FAILED]


def test_soft_limit_raises_inside_the_task(runs: Runs) -> None:
    key = runs.key("soft")
    envelope = runs.envelope(kwargs={"key": key, "seconds": 30}, soft_seconds=0.5)
    runs.publish(envelope)
    failed = runs.wait_for(envelope.run_id, R.FAILED, timeout=15)[-1]
    assert failed.reason == "TimeLimitExceeded"
    assert "SoftTimeLimitExceeded" in failed.message
    assert runs.count(key) == 1
    assert runs.client.exists(f"{key}:ended")  # its finally block ran: raised inside


def test_late_run_is_missed_and_a_timely_one_runs(runs: Runs) -> None:
    late_key, timely_key = runs.key("late"), runs.key("timely")
    now = dt.datetime.now(dt.UTC)
    late = runs.envelope(
        kwargs={"key": late_key},
        slot=now - dt.timedelta(seconds=120),
        starting_deadline_seconds=30,
    )
    timely = runs.envelope(
        kwargs={"key": timely_key},
        slot=now - dt.timedelta(seconds=5),
        starting_deadline_seconds=30,
    )
    runs.publish(late)
    runs.publish(timely)
    missed = runs.wait_for(late.run_id, R.MISSED)
    assert [r.state for r in missed] == [R.PENDING, R.MISSED]
    assert missed[-1].reason == "DeadlineExceeded"
    runs.wait_for(timely.run_id, R.SUCCEEDED)
    assert runs.count(late_key) == 0
    assert runs.count(timely_key) == 1


def test_same_run_id_delivered_three_times_executes_once(runs: Runs) -> None:
    key = runs.key("dup")
    envelope = runs.envelope(kwargs={"key": key, "seconds": 0.3})
    before = sum(runs.dropped().values())
    assert runs.publish(envelope)
    assert not runs.publish(envelope)  # known run id: no second Pending, sent again
    records = runs.wait_for(envelope.run_id, R.SUCCEEDED)
    runs.send(envelope)  # a redelivery after success
    runs.wait_until(lambda: sum(runs.dropped().values()) - before >= 2, 10, "duplicates")
    runs.wait_until(runs.idle, 10, "deliveries left")
    assert runs.count(key) == 1
    records = runs.records(envelope.run_id)
    assert [r.state for r in records] == [R.PENDING, R.RUNNING, R.SUCCEEDED]


def test_forbid_skips_while_a_run_is_active_like_cronjob(runs: Runs) -> None:
    name = "forbid"
    first_key, second_key, third_key = runs.key("f1"), runs.key("f2"), runs.key("f3")
    slot = dt.datetime.now(dt.UTC)
    forbid = {"name": name, "concurrency_policy": ConcurrencyPolicy.FORBID}
    first = runs.envelope(kwargs={"key": first_key, "seconds": 2}, slot=slot, **forbid)
    runs.publish(first)
    runs.wait_for(first.run_id, R.RUNNING)
    second = runs.envelope(
        kwargs={"key": second_key}, slot=slot + dt.timedelta(seconds=1), **forbid
    )
    runs.publish(second)
    skipped = runs.wait_for(second.run_id, R.SKIPPED)[-1]
    assert skipped.reason == "ConcurrencyForbid"
    runs.wait_for(first.run_id, R.SUCCEEDED)
    third = runs.envelope(kwargs={"key": third_key}, slot=slot + dt.timedelta(seconds=2), **forbid)
    runs.publish(third)
    runs.wait_for(third.run_id, R.SUCCEEDED)
    assert (runs.count(first_key), runs.count(second_key), runs.count(third_key)) == (1, 0, 1)


def test_replace_stops_the_active_run_after_recording_it_failed(runs: Runs) -> None:
    old_key, new_key = runs.key("old"), runs.key("new")
    slot = dt.datetime.now(dt.UTC)
    replace = {"name": "replace", "concurrency_policy": ConcurrencyPolicy.REPLACE}
    # A blocking sleep: only a signal can interrupt it.
    old = runs.envelope(
        "bk_test.block", kwargs={"key": old_key, "seconds": 60}, slot=slot, **replace
    )
    runs.publish(old)
    runs.wait_for(old.run_id, R.RUNNING)
    new = runs.envelope(
        kwargs={"key": new_key, "seconds": 0.2}, slot=slot + dt.timedelta(seconds=1), **replace
    )
    runs.publish(new)
    runs.wait_for(new.run_id, R.SUCCEEDED)
    replaced = runs.wait_for(old.run_id, R.FAILED)[-1]
    assert replaced.reason == "Replaced"
    assert new.run_id in replaced.message
    runs.wait_until(
        lambda: bool(runs.client.exists(f"{old_key}:ended")), 10, "the old run never stopped"
    )
    stopped_at = float(runs.client.get(f"{old_key}:ended") or 0)
    assert replaced.time.timestamp() <= stopped_at
    time.sleep(2.5)  # a lease period: the stopped run is not recovered or redelivered
    assert runs.count(old_key) == 1
    assert runs.count(f"{old_key}:done") == 0
    assert [r.state for r in runs.records(old.run_id)] == [R.PENDING, R.RUNNING, R.FAILED]


def test_replace_kills_a_run_that_ignores_its_stop(runs: Runs) -> None:
    old_key = runs.key("stubborn")
    slot = dt.datetime.now(dt.UTC)
    replace = {"name": "stubborn", "concurrency_policy": ConcurrencyPolicy.REPLACE}
    old = runs.envelope(
        "bk_test.stubborn", kwargs={"key": old_key, "seconds": 30}, slot=slot, **replace
    )
    runs.publish(old)
    runs.wait_for(old.run_id, R.RUNNING)
    new = runs.envelope(
        kwargs={"key": runs.key("after-stubborn")}, slot=slot + dt.timedelta(seconds=1), **replace
    )
    runs.publish(new)
    runs.wait_for(new.run_id, R.SUCCEEDED)
    assert runs.wait_for(old.run_id, R.FAILED)[-1].reason == "Replaced"
    runs.wait_until(lambda: runs.count(f"{old_key}:ignored") >= 1, 10, "no stop was sent")
    # Killed after the grace (2 renewals); the parent requeues it, the claim drops it.
    ignored = runs.count(f"{old_key}:ignored")
    time.sleep(3)
    assert runs.count(f"{old_key}:ignored") == ignored
    assert runs.count(old_key) == 1
    assert runs.count(f"{old_key}:done") == 0
    assert [r.state for r in runs.records(old.run_id)] == [R.PENDING, R.RUNNING, R.FAILED]


def test_allow_runs_both_at_once(runs: Runs) -> None:
    slot = dt.datetime.now(dt.UTC)
    allow = {"name": "allow", "concurrency_policy": ConcurrencyPolicy.ALLOW}
    first = runs.envelope(kwargs={"key": runs.key("a1"), "seconds": 1.5}, slot=slot, **allow)
    second = runs.envelope(
        kwargs={"key": runs.key("a2"), "seconds": 0.1},
        slot=slot + dt.timedelta(seconds=1),
        **allow,
    )
    runs.publish(first)
    runs.wait_for(first.run_id, R.RUNNING)
    runs.publish(second)
    second_done = runs.wait_for(second.run_id, R.SUCCEEDED)[-1]
    first_done = runs.wait_for(first.run_id, R.SUCCEEDED)[-1]
    assert second_done.time < first_done.time


def test_task_not_allowed_or_not_registered_fails_without_retries(runs: Runs) -> None:
    retry = RetryPolicy(max_retries=3, initial_seconds=0.1)
    refused = runs.envelope("os.system", kwargs={"command": "true"}, retry=retry)
    missing = runs.envelope("bk_test.missing", retry=retry)
    runs.publish(refused)
    runs.publish(missing)
    refused_records = runs.wait_for(refused.run_id, R.FAILED)
    assert [r.state for r in refused_records] == [R.PENDING, R.FAILED]
    assert refused_records[-1].reason == "TaskNotAllowed"
    assert "allowedTasks (bk_test.*, beatkeeper.*)" in refused_records[-1].message
    missing_records = runs.wait_for(missing.run_id, R.FAILED)
    assert [r.state for r in missing_records] == [R.PENDING, R.FAILED]
    assert missing_records[-1].reason == "TaskNotRegistered"


def test_a_worker_without_allowed_tasks_runs_only_its_modules_and_the_builtins(
    workers: Workers, redis_url: str
) -> None:
    # An empty list never means everything: worker_tasks registers its tasks under
    # bk_test.*, outside the module's own name, so only the built-ins may run.
    workers.start("deny", BEATKEEPER_ALLOWED_TASKS="", BEATKEEPER_TASK_MODULES="worker_tasks")
    made = make_runs(redis_url, workers.queue)
    runs = next(made)
    try:
        refused = runs.envelope("bk_test.work", kwargs={"key": runs.key("deny")})
        builtin = runs.envelope("beatkeeper.sleep", kwargs={"seconds": 0})
        runs.publish(refused)
        runs.publish(builtin)
        record = runs.wait_for(refused.run_id, R.FAILED)[-1]
        assert record.reason == "TaskNotAllowed"
        assert "(worker_tasks.*, beatkeeper.http, beatkeeper.sleep)" in record.message
        assert runs.count(runs.key("deny")) == 0
        runs.wait_for(builtin.run_id, R.SUCCEEDED)
    finally:
        made.close()
