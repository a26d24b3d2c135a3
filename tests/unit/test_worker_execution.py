"""The pure decisions of an execution: refusals, deadlines, retries, replaced records."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beatkeeper_core.contract import (
    ConcurrencyPolicy,
    RetryPolicy,
    RunEnvelope,
    RunPolicy,
    RunState,
    TaskCall,
)
from beatkeeper_core.runs import Replaced
from beatkeeper_worker.execution import (
    missed_record,
    parse_envelope,
    refusal_of,
    replaced_records,
    skipped_record,
)
from beatkeeper_worker.retries import plan_retry

SLOT = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
REGISTERED = {"beatkeeper.run", "beatkeeper.http", "app.reports.daily", "app.other"}


def envelope(policy: RunPolicy | None = None, attempt: int = 1) -> RunEnvelope:
    made = RunEnvelope.for_slot("ns", "job", SLOT, TaskCall(name="app.t"), policy or RunPolicy())
    return made.model_copy(update={"attempt": attempt})


@pytest.mark.parametrize(
    ("name", "allowed", "reason"),
    [
        ("app.reports.daily", ("app.reports.*",), None),
        ("beatkeeper.http", ("app.*", "beatkeeper.http"), None),
        ("app.other", ("app.reports.*",), "TaskNotAllowed"),
        ("App.reports.daily", ("app.reports.*",), "TaskNotAllowed"),  # case matters
        ("beatkeeper.run", ("*",), "TaskNotAllowed"),  # never its own target
        ("app.reports.weekly", ("*",), "TaskNotRegistered"),
    ],
)
def test_refusals(name: str, allowed: tuple[str, ...], reason: str | None) -> None:
    refusal = refusal_of(name, allowed, REGISTERED)
    assert (refusal[0] if refusal else None) == reason


def test_not_allowed_message_lists_the_globs() -> None:
    refusal = refusal_of("os.system", ("app.*", "beatkeeper.*"), REGISTERED)
    assert refusal is not None
    assert "'os.system'" in refusal[1]
    assert "allowedTasks (app.*, beatkeeper.*)" in refusal[1]


def test_missed_only_for_a_first_attempt_past_its_deadline() -> None:
    policy = RunPolicy(starting_deadline_seconds=30)
    late = SLOT + dt.timedelta(seconds=31)
    record = missed_record(envelope(policy), late)
    assert record is not None
    assert record.state is RunState.MISSED
    assert record.reason == "DeadlineExceeded"
    assert missed_record(envelope(policy), SLOT + dt.timedelta(seconds=30)) is None
    assert missed_record(envelope(policy, attempt=2), late) is None
    assert missed_record(envelope(), late + dt.timedelta(days=1)) is None


def test_jitter_never_makes_a_run_missed_the_deadline_counts_from_its_due_time() -> None:
    slot = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    jittered = RunEnvelope.for_slot(
        "ns",
        "t",
        slot,
        TaskCall(name="x"),
        RunPolicy(starting_deadline_seconds=5),
        due=slot + dt.timedelta(seconds=20),  # jitterSeconds put it 20 s after its slot
    )
    on_time = slot + dt.timedelta(seconds=21)
    assert missed_record(jittered, on_time) is None
    late = missed_record(jittered, slot + dt.timedelta(seconds=26))
    assert late is not None
    assert "after it was due" in late.message


def test_skipped_record_only_under_forbid() -> None:
    forbid = RunPolicy(concurrency_policy=ConcurrencyPolicy.FORBID)
    record = skipped_record(envelope(forbid), SLOT)
    assert record is not None
    assert (record.state, record.reason) == (RunState.SKIPPED, "ConcurrencyForbid")
    assert skipped_record(envelope(), SLOT) is None


def test_replaced_retrying_run_is_recorded_at_the_attempt_that_failed() -> None:
    by = envelope()
    retrying = Replaced(envelope(attempt=3), was_retrying=True)
    running = Replaced(envelope(attempt=2), was_retrying=False)
    out = replaced_records(by, (retrying, running), SLOT)
    assert [(r.attempt, r.state, r.reason) for r in out] == [
        (2, RunState.FAILED, "Replaced"),
        (2, RunState.FAILED, "Replaced"),
    ]


def test_invalid_envelopes_are_dropped() -> None:
    assert parse_envelope({"run_id": "x"}) is None
    assert parse_envelope(envelope().model_dump(mode="json")) == envelope()


@given(
    attempt=st.integers(1, 12),
    initial=st.floats(0, 100),
    factor=st.floats(1, 4),
    cap=st.floats(0, 3600),
    seed=st.integers(0, 2**32),
)
def test_retry_delays_stay_within_the_backoff_ceiling(
    attempt: int, initial: float, factor: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(max_retries=12, initial_seconds=initial, factor=factor, max_seconds=cap)
    plan = plan_retry(envelope(RunPolicy(retry=policy), attempt), SLOT, random.Random(seed))
    assert plan is not None
    assert 0 <= plan.delay <= min(policy.backoff_ceiling(attempt), cap)
    assert plan.at == SLOT + dt.timedelta(seconds=plan.delay)
    assert plan.envelope.attempt == attempt + 1


def test_no_retry_after_max_retries_plus_one_attempts() -> None:
    policy = RunPolicy(retry=RetryPolicy(max_retries=2))
    assert plan_retry(envelope(policy, attempt=2), SLOT) is not None
    assert plan_retry(envelope(policy, attempt=3), SLOT) is None


def test_without_jitter_the_delay_is_the_ceiling() -> None:
    policy = RunPolicy(retry=RetryPolicy(max_retries=5, initial_seconds=2, factor=3, jitter=False))
    delays = [plan.delay for a in (1, 2, 3) if (plan := plan_retry(envelope(policy, a), SLOT))]
    assert delays == [2, 6, 18]
