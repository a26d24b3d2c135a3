"""Supervised background loops: one that dies is restarted, one that keeps dying is reported.

The operator's loops (the work queue, the resync, the run-record consumer) each
catch what they expect; anything else used to end the loop's task silently,
and with it, say, every status update. `LoopSupervisor.start` runs a loop in a
task that restarts it after an unexpected exception (with a short, growing
pause). A loop that dies `max_restarts` times within `window` seconds is given
up on: `check` then raises, so the operator's `/healthz` probe fails and the
kubelet restarts the operator, the last resort.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class LoopsUnhealthy(RuntimeError):
    """A supervised loop kept dying and was given up on."""


@dataclass
class LoopState:
    name: str
    restarts: list[float] = field(default_factory=list)  # monotonic times of deaths
    given_up: bool = False
    running: bool = False

    def report(self) -> dict[str, object]:
        return {"running": self.running, "restarts": len(self.restarts), "gaveUp": self.given_up}


@dataclass
class LoopSupervisor:
    max_restarts: int = 5
    window: float = 300.0
    pause: float = 1.0
    clock: Callable[[], float] = time.monotonic
    loops: dict[str, LoopState] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        state = self.loops.setdefault(name, LoopState(name))
        task = asyncio.create_task(self._keep(state, loop), name=name)
        self.tasks.append(task)
        return task

    async def _keep(self, state: LoopState, loop: Callable[[], Awaitable[None]]) -> None:
        while True:
            state.running = True
            try:
                await loop()
                logger.error("loop %s returned; starting it again", state.name)
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception:
                logger.exception("loop %s died; starting it again", state.name)
            state.running = False
            now = self.clock()
            state.restarts = [t for t in state.restarts if now - t < self.window] + [now]
            if len(state.restarts) > self.max_restarts:
                state.given_up = True
                logger.error(
                    "loop %s died %d times in %.0f s; giving up (healthz now fails)",
                    state.name,
                    len(state.restarts),
                    self.window,
                )
                return
            await asyncio.sleep(self.pause * len(state.restarts))

    def report(self) -> dict[str, dict[str, object]]:
        return {name: state.report() for name, state in self.loops.items()}

    def check(self) -> dict[str, dict[str, object]]:
        """The loops' report; raises LoopsUnhealthy when one was given up on."""
        report = self.report()
        failed = [name for name, state in self.loops.items() if state.given_up]
        if failed:
            raise LoopsUnhealthy(f"loops given up on: {', '.join(failed)}")
        return report

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
