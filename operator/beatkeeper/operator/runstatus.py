"""Fold run records into the run-owned part of ScheduledTask status. Pure.

The run-owned fields are lastRun, history, active, the counters (with
consecutiveFailures, which the reconciler turns into health), lastScheduleTime
and lastSuccessfulTime; the reconciler owns the rest, nextScheduleTime included
(a fire queues the object's reconcile, which moves it on). Folding is idempotent
per run: a record for a run that already finished (a record delivered again after
an operator restart) is ignored, so counters never count a run twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from beatkeeper.api.scheduledtask import RunStatus
from beatkeeper.operator.conditions import Event
from beatkeeper_core import contract

ACTIVE_LIMIT = 50
# Failed runs in a row; the reconciler turns it into health (spec.failureThreshold).
CONSECUTIVE_FAILURES = "consecutiveFailures"
_COUNTERS = {
    contract.RunState.SUCCEEDED: "succeeded",
    contract.RunState.FAILED: "failed",
    contract.RunState.MISSED: "missed",
    contract.RunState.SKIPPED: "skipped",
}


@dataclass
class RunView:
    """The run-owned status of one object, mutable while records are folded in."""

    runs: dict[str, RunStatus] = field(default_factory=dict)  # active and last run, by id
    history: list[RunStatus] = field(default_factory=list)  # finished, newest first
    last_run: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    last_schedule_time: dt.datetime | None = None
    last_successful_time: dt.datetime | None = None
    finished_ids: set[str] = field(default_factory=set)

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> RunView:
        view = cls()
        history = [RunStatus.model_validate(item) for item in status.get("history") or ()]
        view.history = history
        view.finished_ids = {run.id for run in history}
        last = status.get("lastRun")
        if last:
            run = RunStatus.model_validate(last)
            view.runs[run.id] = run
            view.last_run = run.id
            if contract.RunState(run.state).finished:
                view.finished_ids.add(run.id)
        for run_id in status.get("active") or ():
            view.runs.setdefault(run_id, _placeholder(run_id))
        view.counters = {
            name: int(status.get(name) or 0)
            for name in (*_COUNTERS.values(), "retries", CONSECUTIVE_FAILURES)
        }
        view.last_schedule_time = _time(status.get("lastScheduleTime"))
        view.last_successful_time = _time(status.get("lastSuccessfulTime"))
        return view


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return contract.parse_time(value)


def _placeholder(run_id: str) -> RunStatus:
    _, _, slot = contract.parse_run_id(run_id)
    return RunStatus(id=run_id, scheduled_time=slot, state="Pending")


def _later(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _updated(previous: RunStatus | None, record: contract.RunRecord) -> RunStatus:
    start = record.start_time or (previous.start_time if previous else None)
    return RunStatus(
        id=record.run_id,
        scheduled_time=record.slot,
        start_time=start,
        completion_time=record.completion_time,
        state=record.state.value,
        attempts=max(record.attempt, previous.attempts if previous else 0),
        reason=record.reason,
        message=record.message,
        trigger=record.trigger,
        token=record.token or None,
    )


def _is_new_retry(previous: RunStatus | None, record: contract.RunRecord) -> bool:
    return not (
        previous is not None
        and previous.state == "Retrying"
        and previous.attempts >= record.attempt
    )


def fold(view: RunView, records: Iterable[contract.RunRecord], history_limit: int) -> list[Event]:
    """Apply records (in stream order) to `view`; return the events they warrant."""
    events: list[Event] = []
    for record in records:
        if record.run_id in view.finished_ids:
            continue  # delivered again: already counted
        previous = view.runs.get(record.run_id)
        run = _updated(previous, record)
        if record.state is contract.RunState.RETRYING and _is_new_retry(previous, record):
            view.counters["retries"] = view.counters.get("retries", 0) + 1
        view.last_schedule_time = _later(view.last_schedule_time, record.slot)
        last = view.runs.get(view.last_run) if view.last_run else None
        if last is None or record.slot >= last.scheduled_time:
            view.last_run = run.id
        if record.state.finished:
            _finish(view, run, record, history_limit)
            events += _run_event(record)
        else:
            view.runs[run.id] = run
    return events


def _finish(view: RunView, run: RunStatus, record: contract.RunRecord, history_limit: int) -> None:
    counter = _COUNTERS[record.state]
    view.counters[counter] = view.counters.get(counter, 0) + 1
    view.finished_ids.add(run.id)
    view.runs[run.id] = run
    if record.state is contract.RunState.SUCCEEDED:
        view.last_successful_time = _later(
            view.last_successful_time, record.completion_time or record.time
        )
        view.counters[CONSECUTIVE_FAILURES] = 0
    elif record.state is contract.RunState.FAILED and record.reason not in _STOPPED_REASONS:
        view.counters[CONSECUTIVE_FAILURES] = view.counters.get(CONSECUTIVE_FAILURES, 0) + 1
    view.history = sorted([run, *view.history], key=lambda r: r.scheduled_time, reverse=True)
    view.history = view.history[:history_limit]


# Failures that a person did not cause and need not act on: the object's own policy
# (Replace, a newer slot) or a person's cancel stopped the run.
_STOPPED_REASONS = frozenset({"Replaced", "Superseded", "Cancelled"})
RUN_ID_ANNOTATION = "beatkeeper.dev/run-id"


def _run_event(record: contract.RunRecord) -> list[Event]:
    """One stable message per reason and object, so repeats aggregate (count grows);
    what differs per run (its id, attempt, error text) goes on the annotations."""
    if record.state not in (contract.RunState.FAILED, contract.RunState.MISSED):
        return []
    annotations = {
        RUN_ID_ANNOTATION: record.run_id,
        "beatkeeper.dev/attempt": str(record.attempt),
        "beatkeeper.dev/message": record.message,
    }
    reason = record.reason or "Unknown"
    latest = (
        f"kubectl get st {record.name} -n {record.namespace} "
        "-o jsonpath='{.status.lastRun}' shows the latest"
    )
    if record.state is contract.RunState.MISSED:
        message = f"a run did not start within its starting deadline ({reason}); {latest}"
        return [Event("Warning", "RunMissed", message, annotations)]
    if reason in _STOPPED_REASONS:
        return [Event("Normal", "RunStopped", f"a run was stopped ({reason})", annotations)]
    return [Event("Warning", "RunFailed", f"a run failed ({reason}); {latest}", annotations)]


def _dump(run: RunStatus) -> dict[str, Any]:
    return run.to_api()


def _stamp(value: dt.datetime | None) -> str | None:
    return contract.format_time(value) if value else None


def render(view: RunView) -> dict[str, Any]:
    """The run-owned status fields as a merge patch."""
    active = [
        run.id
        for run in sorted(view.runs.values(), key=lambda r: r.scheduled_time)
        if not contract.RunState(run.state).finished
    ][-ACTIVE_LIMIT:]
    last = view.runs.get(view.last_run) if view.last_run else None
    patch: dict[str, Any] = {
        "lastRun": _dump(last) if last else None,
        "history": [_dump(run) for run in view.history],
        "active": active,
        "lastScheduleTime": _stamp(view.last_schedule_time),
        "lastSuccessfulTime": _stamp(view.last_successful_time),
        **view.counters,
    }
    _forget_settled(view, set(active))
    return patch


def _forget_settled(view: RunView, active: set[str]) -> None:
    # Keep only what status shows: active runs and the last run.
    keep = active | ({view.last_run} if view.last_run else set())
    view.runs = {run_id: run for run_id, run in view.runs.items() if run_id in keep}
    if len(view.finished_ids) > 1000:
        view.finished_ids = {run.id for run in view.history} | keep
