"""The lease keeper renews in batches, stops runs that lost their lease, enforces deadlines.

A fake registry and interrupter stand in for Redis and signals; the keeper's
own thread and timing are real, scaled to tens of milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from beatkeeper_core.runs import HeldLease
from beatkeeper_worker.leases import Lease, LeaseKeeper, RunStopped


class FakeRegistry:
    def __init__(self) -> None:
        self.renewals: list[list[str]] = []
        self.lost: set[str] = set()

    def renew(self, leases: Iterable[HeldLease]) -> list[str]:
        ids = [lease.run_id for lease in leases]
        self.renewals.append(ids)
        return [run_id for run_id in ids if run_id in self.lost]


class FakeInterrupter:
    def __init__(self) -> None:
        self.sent: list[tuple[str, type[BaseException]]] = []
        self.cleared: list[str] = []

    def prepare(self) -> None:
        pass

    def interrupt(self, lease: Lease, exc: type[BaseException]) -> None:
        self.sent.append((lease.held.run_id, exc))

    def clear(self, lease: Lease) -> None:
        self.cleared.append(lease.held.run_id)


def lease(run_id: str, soft_in: float | None = None, hard_in: float | None = None) -> Lease:
    now = time.monotonic()
    return Lease(
        held=HeldLease(run_id, f"owner-{run_id}", "q", "ns/obj"),
        thread_id=threading.get_ident(),
        soft_at=None if soft_in is None else now + soft_in,
        hard_at=None if hard_in is None else now + hard_in,
    )


def keeper(registry: FakeRegistry, interrupter: FakeInterrupter, **kwargs: object) -> LeaseKeeper:
    return LeaseKeeper(registry, renew_seconds=0.05, interrupter=interrupter, **kwargs)  # type: ignore[arg-type]


def wait(condition: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition never held")


def test_all_held_leases_are_renewed_in_one_call() -> None:
    registry, interrupter = FakeRegistry(), FakeInterrupter()
    keep = keeper(registry, interrupter)
    with keep.hold(lease("a")), keep.hold(lease("b")):
        wait(lambda: any(len(ids) == 2 for ids in registry.renewals))
    assert sorted(next(ids for ids in registry.renewals if len(ids) == 2)) == ["a", "b"]
    assert keep.held() == []
    assert interrupter.sent == []


def test_a_lost_lease_stops_its_run_once_and_is_no_longer_renewed() -> None:
    registry, interrupter = FakeRegistry(), FakeInterrupter()
    registry.lost.add("a")
    keep = keeper(registry, interrupter)
    with keep.hold(lease("a")):
        wait(lambda: interrupter.sent)
        time.sleep(0.2)
    assert interrupter.sent == [("a", RunStopped)]
    assert sum(ids.count("a") for ids in registry.renewals) == 1
    assert interrupter.cleared == ["a"]


def test_soft_then_hard_deadline_for_the_threads_pool() -> None:
    registry, interrupter = FakeRegistry(), FakeInterrupter()
    hard_limited: list[str] = []
    keep = keeper(registry, interrupter, on_hard_limit=lambda x: hard_limited.append(x.held.run_id))
    with keep.hold(lease("a", soft_in=0.05, hard_in=0.15)):
        wait(lambda: len(interrupter.sent) == 2)
    assert interrupter.sent == [("a", SoftTimeLimitExceeded), ("a", TimeLimitExceeded)]
    assert hard_limited == ["a"]


def test_no_interrupt_once_the_run_has_ended() -> None:
    registry, interrupter = FakeRegistry(), FakeInterrupter()
    keep = keeper(registry, interrupter)
    with keep.hold(lease("a", soft_in=0.1)):
        pass
    time.sleep(0.2)
    assert interrupter.sent == []


class UnreachableRegistry(FakeRegistry):
    """Redis cut off from this worker: every renewal fails."""

    def renew(self, leases: Iterable[HeldLease]) -> list[str]:
        import redis

        raise redis.ConnectionError("unreachable")


def test_an_unrenewable_lease_is_fenced_before_it_can_expire() -> None:
    interrupter = FakeInterrupter()
    died: list[float] = []
    keep = LeaseKeeper(
        UnreachableRegistry(),  # type: ignore[arg-type]
        renew_seconds=0.1,
        lease_seconds=0.4,
        interrupter=interrupter,
        die=lambda: died.append(time.monotonic()),
    )
    held = lease("a")
    with keep.hold(held):
        wait(lambda: interrupter.sent)
        stopped = time.monotonic()
        wait(lambda: died)  # the run ignored its stop: the process goes before the lease
    expires = held.confirmed_at + 0.4
    assert interrupter.sent == [("a", RunStopped)]
    assert held.fenced
    assert held.confirmed_at + 0.3 - 0.05 <= stopped < expires
    assert died[0] < expires


def test_confirmed_renewals_keep_the_fence_away() -> None:
    interrupter = FakeInterrupter()
    keep = LeaseKeeper(
        FakeRegistry(),  # type: ignore[arg-type]
        renew_seconds=0.05,
        lease_seconds=0.2,
        interrupter=interrupter,
        die=lambda: pytest.fail("a renewed lease must not kill its process"),
    )
    held = lease("a")
    first = held.confirmed_at
    with keep.hold(held):
        time.sleep(0.6)  # three lease periods, renewed all along
    assert held.confirmed_at > first + 0.4
    assert interrupter.sent == []
    assert not held.fenced
