"""The autoscaler's rules with an injected clock, and pre-warm slots."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest

from beatkeeper.api.workerpool import Autoscaling
from beatkeeper.operator.autoscaler import (
    BacklogSample,
    Decision,
    ScalerState,
    Upcoming,
    decide,
    measure,
)
from beatkeeper.operator.workerpools import NextSlots, slot_source

T0 = dt.datetime(2026, 3, 7, 12, 0, 0, tzinfo=dt.UTC)


def policy(**fields: Any) -> Autoscaling:
    return Autoscaling.model_validate({"maxReplicas": 10, **fields})


def sample(queued: int = 0, unacked: int = 0, active: int = 0, **extra: Any) -> BacklogSample:
    return BacklogSample(queued=queued, unacked=unacked, active=active, **extra)


@dataclass
class Pool:
    """A pool polled by the autoscaler; `replicas` follows each decision, as the Deployment."""

    policy: Autoscaling
    replicas: int = 0
    concurrency: int = 2
    prefetch: int = 1
    now: dt.datetime = T0
    state: ScalerState = field(default_factory=ScalerState)

    def poll(self, backlog: BacklogSample, upcoming: Upcoming | None = None) -> Decision:
        decision = decide(
            self.policy,
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            sample=backlog,
            current=self.replicas,
            pods=self.replicas,
            upcoming=upcoming,
            state=self.state,
            now=self.now,
        )
        self.replicas, self.state = decision.replicas, decision.state
        return decision

    def run(self, seconds: int, backlog: BacklogSample, every: int = 1) -> list[int]:
        """Poll every `every` seconds for `seconds`; the replica count after each poll."""
        seen = []
        for _ in range(0, seconds, every):
            self.now += dt.timedelta(seconds=every)
            seen.append(self.poll(backlog).replicas)
        return seen


# The backlog: queued + reserved + active + due retries.


def test_backlog_counts_every_kind_of_waiting_work() -> None:
    found = sample(queued=5, unacked=4, active=3, retries_due=2)
    # 4 unacked = 3 running + 1 reserved (tasks ack late, so running ones are unacked too)
    assert measure(found, pods=2, concurrency=2, prefetch=1) == 5 + 1 + 3 + 2


def test_a_dead_workers_prefetched_runs_are_backlog_a_pool_at_zero_wakes_for() -> None:
    # No pod, 3 unacked messages: prefetched by a worker killed without a warm shutdown.
    # The broker puts them back on the queue within its visibility timeout; until then
    # they still need a worker.
    assert measure(sample(unacked=3), pods=0, concurrency=2, prefetch=1) == 3
    # More unacked than one pod can hold: the rest belongs to a dead worker.
    assert measure(sample(unacked=9), pods=1, concurrency=2, prefetch=2) == 9


@pytest.mark.parametrize(
    ("backlog", "target", "expected"),
    [(1, None, 1), (2, None, 1), (3, None, 2), (37, None, 19), (37, 5, 8), (10, 5, 2)],
)
def test_desired_is_backlog_over_target_per_replica(
    backlog: int, target: int | None, expected: int
) -> None:
    pool = Pool(policy(targetPerReplica=target, maxReplicas=100))
    assert pool.poll(sample(queued=backlog)).replicas == expected


def test_scale_up_is_immediate_and_says_why() -> None:
    pool = Pool(policy(maxReplicas=5))
    decision = pool.poll(sample(queued=37))
    assert decision.replicas == 5
    assert decision.reason == "backlog 37 -> 5 replicas"
    assert decision.limit.limited
    assert decision.limit.reason == "TooManyReplicas"
    assert "capped at maxReplicas 5" in decision.limit.message


def test_min_replicas_holds_an_idle_pool_and_says_so() -> None:
    pool = Pool(policy(minReplicas=2))
    decision = pool.poll(sample())
    assert decision.replicas == 2
    assert (decision.limit.limited, decision.limit.reason) == (True, "TooFewReplicas")
    within = Pool(policy(minReplicas=1)).poll(sample(queued=3)).limit
    assert (within.limited, within.reason) == (False, "DesiredWithinRange")


def test_activation_backlog_gates_waking_from_zero_only() -> None:
    pool = Pool(policy(activationBacklog=5))
    assert pool.poll(sample(queued=5)).replicas == 0
    assert pool.poll(sample(queued=6)).replicas == 3
    # Once awake, the usual rule: 2 queued -> 1 replica, not 0.
    pool.now += dt.timedelta(seconds=120)
    assert pool.poll(sample(queued=2)).replicas == 1


def test_scale_up_window_takes_the_lowest_recommendation() -> None:
    pool = Pool(policy(scaleUp={"stabilizationSeconds": 10}), replicas=1)
    pool.poll(sample(queued=2))
    pool.now += dt.timedelta(seconds=1)
    # A spike: the window still holds the earlier "1 replica" until it is 10 s old.
    assert pool.poll(sample(queued=20)).replicas == 1
    assert pool.run(8, sample(queued=20)) == [1] * 8
    assert pool.run(1, sample(queued=20)) == [10]


def test_scale_up_max_step() -> None:
    pool = Pool(policy(scaleUp={"maxStep": 2}))
    assert [pool.poll(sample(queued=20)).replicas for _ in range(6)] == [2, 4, 6, 8, 10, 10]


def test_scale_down_waits_for_the_window_then_goes_to_zero() -> None:
    pool = Pool(policy(scaleDown={"stabilizationSeconds": 60}))
    pool.poll(sample(queued=8))
    assert pool.replicas == 4
    seen = pool.run(60, sample())
    assert set(seen[:59]) == {4}, "scaled down inside the window"
    assert seen[59] == 0
    assert pool.poll(sample()).replicas == 0


def test_scale_down_message_names_the_idle_window() -> None:
    pool = Pool(policy(scaleDown={"stabilizationSeconds": 5}))
    pool.poll(sample(queued=4))
    pool.run(4, sample())
    pool.now += dt.timedelta(seconds=1)
    decision = pool.poll(sample())
    assert (decision.replicas, decision.reason) == (0, "scale down to 0 after 5 s idle")


def test_scale_down_follows_the_highest_recommendation_of_the_window() -> None:
    pool = Pool(policy(scaleDown={"stabilizationSeconds": 10}))
    pool.poll(sample(queued=12))  # 6 at t0
    assert pool.run(5, sample(queued=8)) == [6] * 5  # 4 recommended at t1..t5
    decisions = []
    for _ in range(10):  # 1 recommended from t6 on
        pool.now += dt.timedelta(seconds=1)
        decisions.append(pool.poll(sample(queued=2)))
    assert [d.replicas for d in decisions] == [6] * 4 + [4] * 5 + [1]
    assert decisions[4].reason == "backlog 2 -> 4 replicas after a 10 s window"
    assert decisions[-1].reason == "backlog 2 -> 1 replicas after a 10 s window"


def test_scale_down_max_step() -> None:
    pool = Pool(policy(scaleDown={"stabilizationSeconds": 0, "maxStep": 3}), replicas=10)
    assert [pool.poll(sample()).replicas for _ in range(5)] == [7, 4, 1, 0, 0]


def test_no_scale_down_before_a_whole_window_was_observed() -> None:
    # After an operator restart the memory is empty: a pool at 4 keeps 4 for a window.
    pool = Pool(policy(scaleDown={"stabilizationSeconds": 30}), replicas=4)
    seen = [pool.poll(sample()).replicas]
    seen += pool.run(30, sample())
    assert set(seen[:-1]) == {4}
    assert seen[-1] == 0


def test_never_below_what_the_running_work_needs() -> None:
    # 3 runs active at concurrency 2 need 2 replicas, whatever targetPerReplica says.
    pool = Pool(policy(targetPerReplica=100, scaleDown={"stabilizationSeconds": 0}), replicas=4)
    running = sample(unacked=3, active=3)
    assert pool.poll(running).replicas == 2
    assert pool.run(5, running) == [2] * 5
    assert pool.poll(sample()).replicas == 0


def test_running_work_does_not_scale_up_by_itself() -> None:
    pool = Pool(policy(targetPerReplica=100), replicas=1)
    assert pool.poll(sample(unacked=3, active=3)).replicas == 1


def test_max_replicas_lowered_below_current_applies_at_once() -> None:
    pool = Pool(policy(maxReplicas=2, scaleDown={"stabilizationSeconds": 300}), replicas=6)
    assert pool.poll(sample(queued=50, unacked=12, active=12)).replicas == 2


def test_prewarm_brings_one_replica_before_the_slot() -> None:
    slot = Upcoming(T0 + dt.timedelta(seconds=30), "ns/nightly")
    pool = Pool(policy(prewarmSeconds=30, activationBacklog=10))
    pool.now = T0 - dt.timedelta(seconds=1)
    assert pool.poll(sample(), slot).replicas == 0
    pool.now = T0
    decision = pool.poll(sample(), slot)
    assert decision.replicas == 1
    assert decision.reason == "prewarm for ns/nightly at 12:00:30"
    # Until the slot, and the scale-down window after it, the replica stays.
    pool.now = slot.at - dt.timedelta(seconds=1)
    assert pool.poll(sample(), slot).replicas == 1


def test_prewarm_does_not_cap_a_busier_pool() -> None:
    slot = Upcoming(T0 + dt.timedelta(seconds=5), "ns/t")
    decision = Pool(policy()).poll(sample(queued=8), slot)
    assert (decision.replicas, decision.reason) == (4, "backlog 8 -> 4 replicas")


def test_a_retry_due_soon_prewarms_and_a_due_one_counts_as_backlog() -> None:
    soon = Upcoming(T0 + dt.timedelta(seconds=10), "retry of ns/t@2026-03-07T11:00:00Z")
    decision = Pool(policy(prewarmSeconds=10)).poll(sample(next_retry=soon))
    assert decision.replicas == 1
    assert decision.reason.startswith("prewarm for retry of ns/t@")
    due = Pool(policy(prewarmSeconds=0)).poll(sample(retries_due=3))
    assert (due.replicas, due.backlog) == (2, 3)


def test_scale_to_zero_and_back() -> None:
    pool = Pool(policy(scaleDown={"stabilizationSeconds": 2}))
    assert pool.poll(sample(queued=1)).replicas == 1
    assert pool.run(2, sample()) == [1, 0]
    assert pool.poll(sample(queued=5)).replicas == 3


# Pre-warm slots: the next slot of a pool's ScheduledTasks.


def task(name: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    meta = {
        "uid": f"uid-{name}",
        "generation": generation,
        "creationTimestamp": "2026-03-07T11:00:00Z",
    }
    return slot_source("ns", name, meta, {"workerPool": "p", "task": {"name": "x"}, **spec})


def test_next_slots_finds_the_earliest_slot_of_the_pool() -> None:
    slots = NextSlots()
    found = slots.earliest(
        [
            task("hourly", schedule="0 * * * *"),
            task("soon", every="45s"),  # created 11:00:00: slots every 45 s
            task("paused", every="1s", suspend=True),
            task("past", at="2026-03-07T11:59:00Z"),
            task("broken", schedule="*/61 * * * *"),
        ],
        T0,
    )
    assert found == Upcoming(dt.datetime(2026, 3, 7, 12, 0, 45, tzinfo=dt.UTC), "ns/soon")


def test_next_slots_caches_per_generation_and_forgets_removed_tasks() -> None:
    slots = NextSlots()
    slots.earliest([task("a", every="1h")], T0)
    first = slots.cache["uid-a"].schedule
    slots.earliest([task("a", every="1h")], T0 + dt.timedelta(seconds=5))
    assert slots.cache["uid-a"].schedule is first
    changed = slots.earliest([task("a", generation=2, every="10s")], T0)
    assert changed is not None
    assert changed.at == dt.datetime(2026, 3, 7, 12, 0, 10, tzinfo=dt.UTC)
    assert slots.earliest([], T0) is None
    assert slots.cache == {}


def test_next_slots_moves_on_when_a_slot_passes() -> None:
    slots = NextSlots()
    upcoming = slots.earliest([task("t", every="1m")], T0)
    assert upcoming is not None
    later = slots.earliest([task("t", every="1m")], upcoming.at)
    assert later is not None
    assert later.at == upcoming.at + dt.timedelta(minutes=1)
