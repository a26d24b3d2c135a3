"""What beat does with one due entry: the pure part.

Given an entry's definition, the slot its score stood for, beat's meta and
`now`, decide which slots to publish, which to record as Missed, and what the
entry's next slot is. Slots up to `GRACE_SECONDS` late are ordinary lateness
and all run; older ones were missed by downtime of beat (or a full queue), and
the entry's catchUp policy picks which of them run: the latest `maxRuns` within
`windowSeconds`, oldest first. The rest are recorded Missed (at most
`MISSED_RECORD_LIMIT` of them, the latest).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from beatkeeper_core import contract, schedules

GRACE_SECONDS = 10.0
MISSED_RECORD_LIMIT = 100
_EPSILON = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class FirePlan:
    runs: list[tuple[dt.datetime, contract.Trigger]]
    missed: list[dt.datetime]
    next: contract.EntryNext
    meta: contract.EntryMeta


def _catch_up(
    definition: contract.EntryDefinition, late: list[dt.datetime], now: dt.datetime
) -> tuple[list[dt.datetime], list[dt.datetime]]:
    """(run, missed) among slots later than the grace period."""
    window_start = now - dt.timedelta(seconds=definition.catch_up.window_seconds)
    eligible = [slot for slot in late if slot >= window_start]
    keep = definition.catch_up.max_runs
    run = eligible[-keep:] if keep else []
    missed = [slot for slot in late if slot not in run]
    return run, missed


def plan_fire(
    definition: contract.EntryDefinition,
    current: contract.EntryNext,
    meta: contract.EntryMeta,
    now: dt.datetime,
) -> FirePlan:
    schedule = definition.schedule.build()
    if current.slot is None or not definition.enabled:
        return FirePlan([], [], contract.EntryNext(), meta)
    if current.slot > now:  # scored by a clock ahead of ours: not due yet
        return FirePlan([], [], current, meta)
    # Slots from the entry's slot up to now: the late ones only as many as could
    # matter (a day of `every: 1s` is 86,400), all of the on-time ones.
    grace_start = max(now - dt.timedelta(seconds=GRACE_SECONDS), current.slot)
    limit = MISSED_RECORD_LIMIT + definition.catch_up.max_runs
    late = schedules.slots_between(schedule, current.slot - _EPSILON, grace_start - _EPSILON, limit)
    on_time = schedules.slots_between(schedule, grace_start - _EPSILON, now)
    slots = late + on_time
    caught_up, missed = _catch_up(definition, late, now)
    runs: list[tuple[dt.datetime, contract.Trigger]] = [(s, "catch-up") for s in caught_up]
    runs += [(s, "schedule") for s in on_time]
    upcoming = schedule.next_after(max(slots[-1], now))
    return FirePlan(
        runs=runs,
        missed=missed[-MISSED_RECORD_LIMIT:],
        next=definition.next_for(upcoming),
        meta=contract.EntryMeta(
            last_slot=slots[-1],
            last_run_at=now if runs else meta.last_run_at,
            total_run_count=meta.total_run_count + len(runs),
        ),
    )
