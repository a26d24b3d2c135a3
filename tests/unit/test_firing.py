"""Beat's per-entry decision: which slots run, which are Missed, what comes next."""

from __future__ import annotations

import datetime as dt

import pytest

from beatkeeper_core import contract
from beatkeeper_core.firing import GRACE_SECONDS, MISSED_RECORD_LIMIT, plan_fire

T0 = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def every(
    seconds: int, *, max_runs: int = 1, window: int = 86400, jitter: int = 0
) -> contract.EntryDefinition:
    return contract.EntryDefinition(
        name="ns/t",
        namespace="ns",
        object_name="t",
        queue="beatkeeper.ns.p",
        schedule=contract.ScheduleSpec(kind="every", every_seconds=seconds, anchor=T0),
        task=contract.TaskCall(name="beatkeeper.sleep"),
        jitter_seconds=jitter,
        catch_up=contract.CatchUp(window_seconds=window, max_runs=max_runs),
    )


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def fire(definition: contract.EntryDefinition, slot: dt.datetime, now: dt.datetime) -> object:
    return plan_fire(
        definition, contract.EntryNext(slot=slot, due=slot.timestamp()), contract.EntryMeta(), now
    )


def test_on_time_slot_runs_and_next_is_one_interval_later() -> None:
    plan = fire(every(30), at(30), at(30) + dt.timedelta(milliseconds=40))
    assert plan.runs == [(at(30), "schedule")]  # type: ignore[attr-defined]
    assert plan.missed == []  # type: ignore[attr-defined]
    assert plan.next.slot == at(60)  # type: ignore[attr-defined]
    assert plan.meta.last_slot == at(30)  # type: ignore[attr-defined]
    assert plan.meta.total_run_count == 1  # type: ignore[attr-defined]


def test_slots_within_grace_all_run() -> None:
    plan = fire(every(2), at(2), at(8))
    assert [slot for slot, _ in plan.runs] == [at(2), at(4), at(6), at(8)]  # type: ignore[attr-defined]
    assert plan.next.slot == at(10)  # type: ignore[attr-defined]


def test_downtime_runs_only_the_latest_missed_slot_by_default() -> None:
    now = at(3600 + 15)  # beat was down an hour
    plan = fire(every(60), at(60), now)
    runs = plan.runs  # type: ignore[attr-defined]
    assert runs == [(at(3600), "catch-up")]
    assert plan.missed[-1] == at(3540)  # type: ignore[attr-defined]
    assert len(plan.missed) == 59  # type: ignore[attr-defined]
    assert plan.next.slot == at(3660)  # type: ignore[attr-defined]


def test_catch_up_runs_oldest_first_within_the_window() -> None:
    now = at(600 + 20)
    plan = fire(every(60, max_runs=3, window=200), at(60), now)
    assert plan.runs == [(at(480), "catch-up"), (at(540), "catch-up"), (at(600), "catch-up")]  # type: ignore[attr-defined]


def test_window_excludes_old_slots_even_with_room_in_max_runs() -> None:
    now = at(600 + 20)
    plan = fire(every(60, max_runs=10, window=130), at(60), now)
    assert [s for s, _ in plan.runs] == [at(540), at(600)]  # type: ignore[attr-defined]


def test_max_runs_zero_runs_nothing_missed() -> None:
    plan = fire(every(60, max_runs=0), at(60), at(600 + 20))
    assert plan.runs == []  # type: ignore[attr-defined]
    assert plan.missed == [at(s) for s in range(60, 601, 60)]  # type: ignore[attr-defined]


def test_missed_records_are_bounded() -> None:
    plan = fire(every(1), at(1), at(86400))
    assert len(plan.missed) == MISSED_RECORD_LIMIT  # type: ignore[attr-defined]
    # the latest late slot, then every slot of the grace period, both ends included
    assert len(plan.runs) == 1 + int(GRACE_SECONDS) + 1  # type: ignore[attr-defined]


def test_once_schedule_has_no_next() -> None:
    definition = every(60).model_copy(
        update={"schedule": contract.ScheduleSpec(kind="at", at=at(5))}
    )
    plan = fire(definition, at(5), at(5))
    assert plan.runs == [(at(5), "schedule")]  # type: ignore[attr-defined]
    assert plan.next == contract.EntryNext()  # type: ignore[attr-defined]


def test_slot_ahead_of_this_clock_does_not_fire() -> None:
    plan = fire(every(60), at(60), at(59))
    assert plan.runs == []  # type: ignore[attr-defined]
    assert plan.next.slot == at(60)  # type: ignore[attr-defined]


@pytest.mark.parametrize("jitter", [0, 5, 30])
def test_jitter_is_stable_and_bounded(jitter: int) -> None:
    definition = every(60, jitter=jitter)
    due = definition.due(at(60)) - at(60).timestamp()
    assert 0 <= due <= jitter
    assert definition.due(at(60)) == every(60, jitter=jitter).due(at(60))


def test_first_slot_of_a_new_entry() -> None:
    assert every(60).first_slot(at(61)) == at(120)
    past = every(60).model_copy(update={"schedule": contract.ScheduleSpec(kind="at", at=at(5))})
    assert past.first_slot(at(65)) == at(5)  # inside the catch-up window: still runs
    assert past.first_slot(at(5 + 86400 + 1)) is None
    assert every(60).model_copy(update={"enabled": False}).first_slot(at(0)) is None
