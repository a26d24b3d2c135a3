"""Per-object trouble (backoff, one event per episode) and supervised background loops."""

from __future__ import annotations

import asyncio

import pytest

from beatkeeper.operator.supervision import LoopsUnhealthy, LoopSupervisor
from beatkeeper.operator.trouble import TroubleBook


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trouble_backs_off_exponentially_to_a_cap_and_announces_once_per_episode() -> None:
    clock = Clock()
    book = TroubleBook(clock=clock, base=2, cap=10)
    first = book.failed("uid", "StatusWriteFailed", "refused")
    assert first.announce
    assert not book.due("uid")
    delays = []
    for _ in range(4):
        clock.now = book.get("uid").retry_at  # type: ignore[union-attr]
        assert book.due("uid")
        again = book.failed("uid", "StatusWriteFailed", "refused")
        assert not again.announce
        delays.append(again.retry_at - clock.now)
    assert delays == [4, 8, 10, 10]
    assert book.failed("uid", "EntryWriteFailed", "WRONGTYPE").announce  # a new reason
    assert book.due("other")
    assert book.cleared("uid") is not None
    assert book.due("uid")
    assert book.failed("uid", "StatusWriteFailed", "refused").announce  # a new episode


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_loop_that_dies_is_started_again() -> None:
    async def scenario() -> tuple[int, dict[str, dict[str, object]]]:
        supervisor = LoopSupervisor(pause=0.01)
        calls = 0

        async def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise RuntimeError("boom")
            await asyncio.sleep(60)

        supervisor.start("flaky", flaky)
        for _ in range(100):
            if calls == 3:
                break
            await asyncio.sleep(0.01)
        report = supervisor.check()
        supervisor.cancel()
        return calls, report

    calls, report = run(scenario())  # type: ignore[misc]
    assert calls == 3
    assert report == {"flaky": {"running": True, "restarts": 2, "gaveUp": False}}


def test_a_loop_that_keeps_dying_is_given_up_and_healthz_fails() -> None:
    async def scenario() -> LoopSupervisor:
        supervisor = LoopSupervisor(max_restarts=3, window=60, pause=0.001)

        async def broken() -> None:
            raise RuntimeError("always")

        task = supervisor.start("broken", broken)
        await asyncio.wait_for(task, timeout=5)  # it ends: given up
        return supervisor

    supervisor = run(scenario())
    assert isinstance(supervisor, LoopSupervisor)
    with pytest.raises(LoopsUnhealthy, match="broken"):
        supervisor.check()
    assert supervisor.report()["broken"]["gaveUp"] is True
