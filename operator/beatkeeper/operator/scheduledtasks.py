"""The ScheduledTask planner: spec + observed state + now -> desired entry and status.

Pure. The handler feeds it what it observed (the object as the apiserver has it,
the WorkerPool spec if known) and applies the plan through the adapters: the
redbeat entry (or its absence), the reconcile-owned part of status, and events.
The run-owned part of status (lastRun, history, counters) is written by the
run-record consumer, never here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from beatkeeper.api.scheduledtask import CANCEL_ANNOTATION, RUN_NOW_ANNOTATION, ScheduledTaskSpec
from beatkeeper.api.validation import InvalidSpec, check_task_allowed, parse_scheduled_task
from beatkeeper.api.workerpool import WorkerPoolSpec
from beatkeeper.operator.conditions import (
    Event,
    Health,
    find,
    health_conditions,
    parse_conditions,
)
from beatkeeper_core import contract, schedules


@dataclass(frozen=True)
class ObservedTask:
    """The parts of a ScheduledTask object the planner reads."""

    namespace: str
    name: str
    generation: int
    created: dt.datetime
    spec: Mapping[str, Any]
    annotations: Mapping[str, str]
    status: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ObservedTask:
        meta = body.get("metadata", {})
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            generation=int(meta.get("generation", 0)),
            created=_parse_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC),
            spec=body.get("spec") or {},
            annotations=meta.get("annotations") or {},
            status=body.get("status") or {},
        )

    @property
    def key(self) -> str:
        return contract.object_key(self.namespace, self.name)

    @property
    def run_now_token(self) -> str | None:
        token = self.annotations.get(RUN_NOW_ANNOTATION, "").strip()
        return token or None

    @property
    def cancel_token(self) -> str | None:
        token = self.annotations.get(CANCEL_ANNOTATION, "").strip()
        return token or None


@dataclass(frozen=True)
class TaskPlan:
    definition: contract.EntryDefinition | None  # None: no entry may exist
    health: Health
    status: dict[str, Any]  # merge patch of the reconcile-owned status fields
    events: list[Event] = field(default_factory=list)
    spec: ScheduledTaskSpec | None = None
    schedule: schedules.Schedule | None = None


def _parse_time(value: Any) -> dt.datetime | None:
    return contract.parse_time(value) if value else None


def _format_time(value: dt.datetime | None) -> str | None:
    return contract.format_time(value) if value else None


def schedule_spec(spec: ScheduledTaskSpec, created: dt.datetime) -> contract.ScheduleSpec:
    if spec.schedule is not None:
        return contract.ScheduleSpec(kind="cron", cron=spec.schedule, time_zone=spec.time_zone)
    if spec.every is not None:
        seconds = schedules.parse_duration(spec.every)
        anchor = created.replace(microsecond=0)
        return contract.ScheduleSpec(kind="every", every_seconds=seconds, anchor=anchor)
    assert spec.at is not None  # the model guarantees exactly one
    return contract.ScheduleSpec(kind="at", at=spec.at.astimezone(dt.UTC))


def run_policy(spec: ScheduledTaskSpec) -> contract.RunPolicy:
    retry, timeouts = spec.retry, spec.timeouts
    return contract.RunPolicy(
        retry=contract.RetryPolicy(
            max_retries=retry.max_retries,
            initial_seconds=retry.backoff.initial_seconds,
            factor=retry.backoff.factor,
            max_seconds=retry.backoff.max_seconds,
            jitter=retry.jitter,
        ),
        soft_seconds=timeouts.soft_seconds if timeouts else None,
        hard_seconds=timeouts.hard_seconds if timeouts else None,
        concurrency_policy=contract.ConcurrencyPolicy(spec.concurrency_policy),
        starting_deadline_seconds=spec.starting_deadline_seconds,
    )


def entry_definition(observed: ObservedTask, spec: ScheduledTaskSpec) -> contract.EntryDefinition:
    """What the redbeat entry of this object must contain."""
    return contract.EntryDefinition(
        name=observed.key,
        namespace=observed.namespace,
        object_name=observed.name,
        queue=contract.queue_name(observed.namespace, spec.worker_pool),
        schedule=schedule_spec(spec, observed.created),
        task=contract.TaskCall(name=spec.task.name, args=spec.task.args, kwargs=spec.task.kwargs),
        policy=run_policy(spec),
        jitter_seconds=spec.jitter_seconds,
        catch_up=contract.CatchUp(
            window_seconds=spec.catch_up.window_seconds, max_runs=spec.catch_up.max_runs
        ),
        enabled=not spec.suspend,
    )


def _status(
    observed: ObservedTask,
    health: Health,
    now: dt.datetime,
    schedule: schedules.Schedule | None,
    spec: ScheduledTaskSpec | None,
    *,
    armed: bool = False,
) -> dict[str, Any]:
    """`armed`: the entry is (to be) in Redis, so the next run is shown whatever the health."""
    conditions = health_conditions(
        parse_conditions(observed.status.get("conditions")), health, observed.generation, now
    )
    upcoming = schedule.next_after(now) if schedule and spec and not spec.suspend else None
    return {
        "observedGeneration": observed.generation,
        "conditions": [c.to_api() for c in conditions],
        "schedule": schedules.describe(schedule) if schedule else None,
        "nextScheduleTime": _format_time(upcoming) if armed else None,
    }


RUNS_FAILING = "RunsFailing"


def runs_failing(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Have the last spec.failureThreshold runs or more failed in a row (suspended: never)?

    From the raw object, so the watch handler can tell a status write that
    crosses the threshold (either way) from one that does not.
    """
    if spec.get("suspend") is True:
        return False
    try:
        threshold = int(spec.get("failureThreshold", _DEFAULT_THRESHOLD))
        failures = int(status.get("consecutiveFailures") or 0)
    except (TypeError, ValueError):
        return False
    return threshold > 0 and failures >= threshold


_DEFAULT_THRESHOLD = ScheduledTaskSpec.model_fields["failure_threshold"].default


def _failing_health(spec: ScheduledTaskSpec) -> Health:
    # Stable, without the count: the condition changes (and its one Warning is
    # posted) when the threshold is crossed, not on every further failure.
    threshold = spec.failure_threshold
    return Health.stalled(
        RUNS_FAILING,
        f"{threshold} or more runs failed in a row (spec.failureThreshold: {threshold}); "
        "status.lastRun has the latest error, and the next successful run clears this",
    )


def _events(
    observed: ObservedTask,
    health: Health,
    spec: ScheduledTaskSpec | None,
    status: Mapping[str, Any] | None = None,
) -> list[Event]:
    previous = parse_conditions(observed.status.get("conditions"))
    was = {kind: find(previous, kind) for kind in ("Ready", "Stalled")}
    stalled_before = was["Stalled"] is not None and was["Stalled"].is_true
    changed = observed.status.get("observedGeneration") != observed.generation
    events: list[Event] = []
    if health.state == "stalled" and (changed or not stalled_before):
        events.append(Event("Warning", health.reason, health.message))
    # A new object gets no event (as a CronJob): at thousands of objects one
    # event each would double the apiserver's writes. Edits and recoveries do.
    seen_before = was["Ready"] is not None
    recovered = seen_before and was["Ready"] is not None and not was["Ready"].is_true
    if health.state == "ready" and spec is not None and seen_before and (changed or recovered):
        if spec.suspend:
            events.append(Event("Normal", "Suspended", "new runs are suspended"))
        else:
            upcoming = (status or {}).get("nextScheduleTime") or "never"
            events.append(Event("Normal", "Scheduled", f"{health.message}; next run at {upcoming}"))
    return events


def _pool_health(
    spec: ScheduledTaskSpec, pool: WorkerPoolSpec | None, pool_known: bool
) -> Health | None:
    if not pool_known:
        return Health.reconciling(
            "WorkerPoolNotFound",
            f'WorkerPool "{spec.worker_pool}" does not exist in this namespace',
        )
    if pool is None:
        return Health.reconciling(
            "WorkerPoolInvalid", f'WorkerPool "{spec.worker_pool}" is Stalled; see its status'
        )
    try:
        check_task_allowed(spec, spec.worker_pool, pool)
    except InvalidSpec as error:
        return Health.stalled("InvalidSpec", str(error))
    return None


def plan_scheduled_task(
    observed: ObservedTask,
    pool: WorkerPoolSpec | None,
    pool_known: bool,
    now: dt.datetime,
) -> TaskPlan:
    """`pool_known`: the named WorkerPool exists; `pool`: its parsed spec (None if invalid)."""
    try:
        spec = parse_scheduled_task(observed.spec)
    except InvalidSpec as error:
        health = Health.stalled("InvalidSpec", str(error))
        return TaskPlan(
            None,
            health,
            _status(observed, health, now, None, None),
            _events(observed, health, None),
        )
    schedule = schedule_spec(spec, observed.created).build()
    blocked = _pool_health(spec, pool, pool_known)
    if blocked is not None:
        status = _status(observed, blocked, now, schedule, spec)
        return TaskPlan(None, blocked, status, _events(observed, blocked, spec), spec, schedule)
    definition = entry_definition(observed, spec)
    if spec.suspend:
        health = Health.ready("Suspended", "new runs are suspended")
    elif runs_failing(observed.spec, observed.status):
        health = _failing_health(spec)  # still armed: the next run may succeed
    else:
        health = Health.ready("Scheduled", f"armed: {schedules.describe(schedule)}")
    status = _status(observed, health, now, schedule, spec, armed=True)
    return TaskPlan(
        definition, health, status, _events(observed, health, spec, status), spec, schedule
    )


def troubled(observed: ObservedTask, reason: str, message: str, now: dt.datetime) -> TaskPlan:
    """The plan of an object whose own reconcile keeps failing (its planner raised, its
    entry cannot be written): Stalled with the reason, no next time, its entry left
    as it is."""
    health = Health.stalled(reason, message)
    return TaskPlan(None, health, _status(observed, health, now, None, None), [])


def unarmed(observed: ObservedTask, plan: TaskPlan, why: str, now: dt.datetime) -> TaskPlan:
    """The plan after its entry could not be written: not Ready, no next time."""
    if plan.definition is None:
        return plan
    health = Health.reconciling("RedisUnavailable", why)
    status = _status(observed, health, now, plan.schedule, plan.spec)
    return TaskPlan(None, health, status, [], plan.spec, plan.schedule)


def status_changes(
    current: Mapping[str, Any], desired: Mapping[str, Any], now: dt.datetime
) -> dict[str, Any]:
    """The part of `desired` that differs from `current` (empty: write nothing).

    nextScheduleTime moves with every fire; the run-record consumer keeps it
    current, so a resync rewrites it only when it is missing, past, or the spec
    changed, instead of patching every object on every resync.
    """
    changes = {}
    for key, value in desired.items():
        if key == "conditions":
            if _conditions_differ(current.get(key), value):
                changes[key] = value
        elif key == "nextScheduleTime":
            if _next_time_stale(current, desired, now):
                changes[key] = value
        elif current.get(key) != value:
            changes[key] = value
    return changes


def _next_time_stale(
    current: Mapping[str, Any], desired: Mapping[str, Any], now: dt.datetime
) -> bool:
    shown = current.get("nextScheduleTime")
    if shown == desired.get("nextScheduleTime"):
        return False
    if shown is None or desired.get("nextScheduleTime") is None:
        return True
    generation_changed = current.get("observedGeneration") != desired.get("observedGeneration")
    shown_time = _parse_time(shown)
    return generation_changed or shown_time is None or shown_time <= now


def _conditions_differ(current: Sequence[Any] | None, desired: Sequence[Any]) -> bool:
    def strip(items: Sequence[Any] | None) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in dict(c).items() if k != "lastTransitionTime"} for c in items or ()
        ]

    return strip(current) != strip(desired)
