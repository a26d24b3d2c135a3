"""Folding run records into status: counters, history, active, idempotence."""

from __future__ import annotations

import datetime as dt
from typing import Any

from beatkeeper.operator.runstatus import RunView, fold, render
from beatkeeper_core import contract

T0 = dt.datetime(2026, 6, 1, 8, 0, 0, tzinfo=dt.UTC)


def envelope(second: int, attempt: int = 1) -> contract.RunEnvelope:
    env = contract.RunEnvelope.for_slot(
        "ns",
        "t",
        T0 + dt.timedelta(seconds=second),
        contract.TaskCall(name="x"),
        contract.RunPolicy(),
    )
    return env.model_copy(update={"attempt": attempt})


def record(
    second: int, state: contract.RunState, attempt: int = 1, **fields: Any
) -> contract.RunRecord:
    when = T0 + dt.timedelta(seconds=second, milliseconds=500)
    if state.finished:
        fields.setdefault("completion_time", when)
    return contract.RunRecord.of(envelope(second, attempt), state, when, **fields)


S = contract.RunState


def rendered(
    records: list[contract.RunRecord], limit: int = 5, status: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[Any]]:
    view = RunView.from_status(status or {})
    events = fold(view, records, limit)
    return render(view), events


def test_a_successful_run() -> None:
    status, events = rendered(
        [record(0, S.PENDING), record(0, S.RUNNING, start_time=T0), record(0, S.SUCCEEDED)]
    )
    assert status["lastRun"]["state"] == "Succeeded"
    assert status["lastRun"]["attempts"] == 1
    assert status["succeeded"] == 1
    assert status["active"] == []
    assert status["lastScheduleTime"] == "2026-06-01T08:00:00Z"
    assert status["lastSuccessfulTime"] == "2026-06-01T08:00:00Z"
    assert "nextScheduleTime" not in status  # the reconciler's, its one writer
    assert [h["id"] for h in status["history"]] == ["ns/t@2026-06-01T08:00:00Z"]
    assert events == []


def test_retries_then_failure_count_each_attempt_once() -> None:
    records = [
        record(0, S.PENDING),
        record(0, S.RUNNING),
        record(0, S.RETRYING, 1, message="boom"),
        record(0, S.RUNNING, 2),
        record(0, S.RETRYING, 2, message="boom"),
        record(0, S.RUNNING, 3),
        record(0, S.FAILED, 3, reason="RetriesExhausted", message="boom"),
    ]
    status, events = rendered(records)
    assert status["retries"] == 2
    assert status["failed"] == 1
    assert status["lastRun"]["attempts"] == 3
    assert status["lastRun"]["reason"] == "RetriesExhausted"
    assert [e.reason for e in events] == ["RunFailed"]


def test_in_flight_runs_are_active() -> None:
    status, _ = rendered([record(0, S.PENDING), record(1, S.RUNNING), record(1, S.RETRYING)])
    assert status["active"] == ["ns/t@2026-06-01T08:00:00Z", "ns/t@2026-06-01T08:00:01Z"]
    assert status["lastRun"]["state"] == "Retrying"


def test_records_delivered_again_are_not_counted_twice() -> None:
    batch = [record(0, S.PENDING), record(0, S.RUNNING), record(0, S.SUCCEEDED)]
    first, _ = rendered(batch)
    again, events = rendered(batch, status=first)
    assert again["succeeded"] == 1
    assert again["history"] == first["history"]
    assert events == []


def test_history_is_bounded_newest_first_and_counts_go_on() -> None:
    records = [
        r for second in range(8) for r in (record(second, S.PENDING), record(second, S.SUCCEEDED))
    ]
    status, _ = rendered(records, limit=3)
    assert status["succeeded"] == 8
    assert [h["scheduledTime"][-3:] for h in status["history"]] == ["07Z", "06Z", "05Z"]


def test_an_older_run_finishing_late_does_not_become_last_run() -> None:
    status, _ = rendered([record(0, S.RUNNING), record(1, S.RUNNING), record(0, S.SUCCEEDED)])
    assert status["lastRun"]["id"].endswith("08:00:01Z")
    assert status["lastRun"]["state"] == "Running"
    assert status["active"] == ["ns/t@2026-06-01T08:00:01Z"]


def test_missed_and_skipped_are_counted_with_events() -> None:
    status, events = rendered(
        [
            record(0, S.MISSED, 0, reason="DeadlineExceeded"),
            record(1, S.SKIPPED, reason="ConcurrencyForbid"),
        ]
    )
    assert status["missed"] == 1
    assert status["skipped"] == 1
    assert [e.reason for e in events] == ["RunMissed"]


def test_the_next_time_is_left_to_the_reconciler() -> None:
    view = RunView()
    fold(view, [record(0, S.SUCCEEDED)], 5)
    assert "nextScheduleTime" not in render(view)


def test_failure_events_keep_one_message_per_reason_and_name_the_run_elsewhere() -> None:
    records = [
        record(second, S.FAILED, reason="TaskNotRegistered", message=f"no task (try {second})")
        for second in range(3)
    ]
    _, events = rendered(records)
    assert {(e.type, e.reason, e.message) for e in events} == {
        (
            "Warning",
            "RunFailed",
            "a run failed (TaskNotRegistered); kubectl get st t -n ns "
            "-o jsonpath='{.status.lastRun}' shows the latest",
        )
    }
    assert [e.annotations["beatkeeper.dev/run-id"] for e in events] == [r.run_id for r in records]
    assert events[2].annotations["beatkeeper.dev/message"] == "no task (try 2)"


def test_runs_stopped_by_policy_or_cancel_are_normal_events() -> None:
    _, events = rendered(
        [
            record(0, S.FAILED, reason="Replaced"),
            record(1, S.FAILED, reason="Cancelled"),
            record(2, S.FAILED, reason="Superseded"),
        ]
    )
    assert [(e.type, e.reason) for e in events] == [("Normal", "RunStopped")] * 3


def test_last_run_names_the_run_now_token_that_started_it() -> None:
    now = contract.RunEnvelope.for_slot(
        "ns", "t", T0, contract.TaskCall(name="x"), contract.RunPolicy(),
        trigger="run-now", tag=contract.run_now_tag("v2"), token="v2",
    )  # fmt: skip
    status, _ = rendered([contract.RunRecord.of(now, S.PENDING, T0)])
    assert status["lastRun"]["token"] == "v2"
    assert status["lastRun"]["trigger"] == "run-now"
    plain, _ = rendered([record(0, S.PENDING)])
    assert "token" not in plain["lastRun"]


def test_consecutive_failures_count_failed_runs_until_a_success() -> None:
    status, _ = rendered([record(0, S.FAILED, reason="TaskNotRegistered")])
    assert status["consecutiveFailures"] == 1
    status, _ = rendered(
        [record(30, S.FAILED, reason="Cancelled"), record(60, S.MISSED, reason="DeadlineExceeded")],
        status=status,
    )
    assert status["consecutiveFailures"] == 1  # a stopped run or a missed slot is not a failure
    status, _ = rendered([record(90, S.FAILED), record(120, S.FAILED)], status=status)
    assert status["consecutiveFailures"] == 3
    status, _ = rendered([record(120, S.FAILED)], status=status)
    assert status["consecutiveFailures"] == 3  # delivered again: not counted twice
    status, _ = rendered([record(150, S.SUCCEEDED)], status=status)
    assert status["consecutiveFailures"] == 0
