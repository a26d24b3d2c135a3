"""The ScheduledTask and WorkerPool planners and kstatus conditions, with a fixed clock."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from beatkeeper.api.validation import parse_worker_pool
from beatkeeper.operator.conditions import Health, find, health_conditions, parse_conditions
from beatkeeper.operator.indexes import SpecGenerations, reconcile_fingerprint
from beatkeeper.operator.scheduledtasks import (
    ObservedTask,
    plan_scheduled_task,
    runs_failing,
    status_changes,
)
from beatkeeper.operator.workerpools import ObservedPool, plan_worker_pool

NOW = dt.datetime(2026, 3, 7, 12, 0, 0, tzinfo=dt.UTC)
CREATED = "2026-03-07T11:59:50Z"
POOL = parse_worker_pool({"image": "w:1", "allowedTasks": ["beatkeeper.*"]})


def body(
    spec: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {
            "namespace": "ns",
            "name": "t",
            "generation": generation,
            "creationTimestamp": CREATED,
            "uid": "u",
        },
        "spec": spec,
        "status": status or {},
    }


EVERY = {"every": "30s", "workerPool": "p", "task": {"name": "beatkeeper.sleep"}}


def plan(
    spec: dict[str, Any],
    status: dict[str, Any] | None = None,
    generation: int = 1,
    pool: Any = POOL,
    known: bool = True,
) -> Any:
    return plan_scheduled_task(
        ObservedTask.from_body(body(spec, status, generation)), pool, known, NOW
    )


def test_valid_task_is_ready_with_an_entry_and_next_time() -> None:
    result = plan(EVERY)
    assert result.health.state == "ready"
    assert result.definition is not None
    assert result.definition.queue == "beatkeeper.ns.p"
    assert result.definition.schedule.every_seconds == 30
    assert result.definition.schedule.anchor == dt.datetime(2026, 3, 7, 11, 59, 50, tzinfo=dt.UTC)
    assert result.status["nextScheduleTime"] == "2026-03-07T12:00:20Z"
    assert result.status["schedule"] == "every 30s"
    assert result.status["observedGeneration"] == 1
    assert result.events == []  # no event for a new object


def test_edit_and_recovery_post_scheduled() -> None:
    first = plan(EVERY)
    edited = plan({**EVERY, "every": "1m"}, status=first.status, generation=2)
    assert [e.reason for e in edited.events] == ["Scheduled"]
    waiting = plan(EVERY, pool=None, known=False)
    recovered = plan(EVERY, status=waiting.status)
    assert [e.reason for e in recovered.events] == ["Scheduled"]


def test_cron_next_time_respects_the_zone_across_dst() -> None:
    # 2026-03-08 02:30 does not exist in New York: the run is at 03:00 EDT (07:00Z).
    spec = {**EVERY, "every": None, "schedule": "30 2 * * *", "timeZone": "America/New_York"}
    result = plan({k: v for k, v in spec.items() if v is not None})
    assert result.status["nextScheduleTime"] == "2026-03-08T07:00:00Z"


def test_invalid_spec_is_stalled_without_an_entry() -> None:
    result = plan({**EVERY, "every": "0s"})
    assert result.definition is None
    assert result.health.state == "stalled"
    stalled = find(parse_conditions(result.status["conditions"]), "Stalled")
    assert stalled is not None
    assert stalled.is_true
    assert stalled.reason == "InvalidSpec"
    assert stalled.message == 'spec.every: "0s": must be at least 1s'
    assert [e.reason for e in result.events] == ["InvalidSpec"]
    assert result.status["nextScheduleTime"] is None


def test_stalled_again_posts_no_second_event() -> None:
    first = plan({**EVERY, "every": "0s"})
    again = plan({**EVERY, "every": "0s"}, status=first.status)
    assert again.events == []
    assert status_changes(first.status, again.status, NOW) == {}


def test_missing_pool_is_reconciling() -> None:
    result = plan(EVERY, pool=None, known=False)
    assert result.definition is None
    assert result.health.state == "reconciling"
    assert result.health.reason == "WorkerPoolNotFound"


def test_task_not_allowed_by_pool_is_stalled() -> None:
    result = plan({**EVERY, "task": {"name": "evil.run"}})
    assert result.health.state == "stalled"
    assert "is not allowed by WorkerPool" in result.health.message


def test_suspended_entry_is_disabled_with_no_next_time() -> None:
    result = plan({**EVERY, "suspend": True}, status=plan(EVERY).status, generation=2)
    assert result.definition is not None
    assert result.definition.enabled is False
    assert result.status["nextScheduleTime"] is None
    assert [e.reason for e in result.events] == ["Suspended"]


def test_unchanged_resync_writes_nothing_and_keeps_transition_times() -> None:
    first = plan(EVERY)
    later = plan_scheduled_task(
        ObservedTask.from_body(body(EVERY, first.status)), POOL, True, NOW + dt.timedelta(seconds=5)
    )
    assert status_changes(first.status, later.status, NOW + dt.timedelta(seconds=5)) == {}
    assert later.status["conditions"] == first.status["conditions"]
    assert later.events == []


def test_next_time_is_rewritten_only_when_stale() -> None:
    first = plan(EVERY)
    past_slot = NOW + dt.timedelta(seconds=25)  # first.nextScheduleTime (12:00:20) is past
    later = plan_scheduled_task(
        ObservedTask.from_body(body(EVERY, first.status)), POOL, True, past_slot
    )
    assert status_changes(first.status, later.status, past_slot) == {
        "nextScheduleTime": "2026-03-07T12:00:50Z"
    }


def test_new_generation_is_observed() -> None:
    first = plan(EVERY)
    second = plan({**EVERY, "every": "1m"}, status=first.status, generation=2)
    changes = status_changes(first.status, second.status, NOW)
    assert changes["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in changes["conditions"])


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("ready", ("True", "False", "False")),
        ("reconciling", ("False", "True", "False")),
        ("stalled", ("False", "False", "True")),
    ],
)
def test_health_maps_to_kstatus_conditions(state: str, expected: tuple[str, str, str]) -> None:
    conditions = health_conditions([], Health(state, "Why", "msg"), 3, NOW)  # type: ignore[arg-type]
    assert [(c.type, c.status) for c in conditions] == list(
        zip(("Ready", "Reconciling", "Stalled"), expected, strict=True)
    )
    assert all(c.observed_generation == 3 for c in conditions)


def test_transition_time_changes_only_on_flip() -> None:
    before = health_conditions([], Health.ready("A"), 1, NOW)
    later = NOW + dt.timedelta(minutes=5)
    same = health_conditions(before, Health.ready("B", "new message"), 2, later)
    assert find(same, "Ready").last_transition_time == NOW  # type: ignore[union-attr]
    flipped = health_conditions(before, Health.stalled("InvalidSpec"), 2, later)
    assert find(flipped, "Ready").last_transition_time == later  # type: ignore[union-attr]
    assert find(flipped, "Stalled").last_transition_time == later  # type: ignore[union-attr]


def test_worker_pool_plan() -> None:
    observed = ObservedPool.from_body(
        {"metadata": {"namespace": "ns", "name": "p", "generation": 4}, "spec": {"image": "w:1"}}
    )
    result = plan_worker_pool(observed, NOW)
    assert result.status["queue"] == "beatkeeper.ns.p"
    # Ready only once its Deployment's replicas are (tests/unit/test_deployments.py).
    assert (result.health.state, result.health.reason) == ("reconciling", "Creating")
    assert result.action == "create"
    bad = ObservedPool.from_body({"metadata": {"namespace": "ns", "name": "p"}, "spec": {}})
    stalled = plan_worker_pool(bad, NOW)
    assert stalled.health.state == "stalled"
    assert [e.reason for e in stalled.events] == ["InvalidSpec"]


def test_reconcile_fingerprint_ignores_status_only_changes() -> None:
    meta = {
        "generation": 3,
        "resourceVersion": "100",
        "annotations": {"a": "1", "beatkeeper.dev/run-now": "t1"},
        "finalizers": ["beatkeeper.dev/finalizer"],
        "managedFields": [{"manager": "beatkeeper", "subresource": "status"}],
    }
    same = {
        **meta,
        "resourceVersion": "101",
        "managedFields": [],
        "annotations": {"beatkeeper.dev/run-now": "t1", "a": "1"},
    }
    assert reconcile_fingerprint(same) == reconcile_fingerprint(meta)
    for changed in (
        {"generation": 4},
        {"annotations": {"a": "1", "beatkeeper.dev/run-now": "t2"}},
        {"deletionTimestamp": "2026-03-07T12:00:00Z"},
        {"finalizers": []},
    ):
        assert reconcile_fingerprint({**meta, **changed}) != reconcile_fingerprint(meta), changed


def test_spec_generations_are_tracked_per_pool() -> None:
    generations = SpecGenerations()
    assert generations.changed("pool-a", 1)
    assert generations.changed("pool-b", 1)  # another pool at the same generation
    assert not generations.changed("pool-a", 1)  # a status write of pool a
    assert generations.changed("pool-a", 2)
    assert generations.changed("pool-b", None, deleted=True)
    assert generations.changed("pool-b", 1)  # recreated under the same uid is still news


def test_runs_failing_past_the_threshold_stall_the_task_but_keep_it_armed() -> None:
    healthy = {"observedGeneration": 1, "consecutiveFailures": 2}
    below = plan(EVERY, status=healthy)
    assert (below.health.state, below.health.reason) == ("ready", "Scheduled")
    failing = plan(EVERY, status={**below.status, "consecutiveFailures": 3})
    assert (failing.health.state, failing.health.reason) == ("stalled", "RunsFailing")
    assert "spec.failureThreshold: 3" in failing.health.message
    assert failing.definition is not None
    assert failing.definition.enabled  # runs go on
    assert failing.status["nextScheduleTime"] is not None
    assert [(e.type, e.reason) for e in failing.events] == [("Warning", "RunsFailing")]
    again = plan(EVERY, status={**failing.status, "consecutiveFailures": 7})
    assert again.events == []  # one Warning per episode: the message has no count
    assert not status_changes({**failing.status, "consecutiveFailures": 7}, again.status, NOW)
    recovered = plan(EVERY, status={**failing.status, "consecutiveFailures": 0})
    assert (recovered.health.state, recovered.health.reason) == ("ready", "Scheduled")
    assert [e.reason for e in recovered.events] == ["Scheduled"]


def test_failure_threshold_zero_or_suspend_never_stall_for_failed_runs() -> None:
    many = {"observedGeneration": 1, "consecutiveFailures": 50}
    off = plan({**EVERY, "failureThreshold": 0}, status=many)
    assert off.health.reason == "Scheduled"
    one = plan({**EVERY, "failureThreshold": 1}, status={**many, "consecutiveFailures": 1})
    assert one.health.reason == "RunsFailing"
    suspended = plan({**EVERY, "suspend": True}, status=many)
    assert (suspended.health.state, suspended.health.reason) == ("ready", "Suspended")


def test_crossing_the_failure_threshold_changes_the_reconcile_fingerprint() -> None:
    meta = {"generation": 1}
    assert runs_failing(EVERY, {"consecutiveFailures": 2}) is False
    assert runs_failing(EVERY, {"consecutiveFailures": 3}) is True
    assert runs_failing({**EVERY, "failureThreshold": "x"}, {"consecutiveFailures": 3}) is False
    assert reconcile_fingerprint(meta, False) != reconcile_fingerprint(meta, True)
