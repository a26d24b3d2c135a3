"""Keeping the leases of the runs this process executes, and stopping runs that lost one.

One `LeaseKeeper` per process (a prefork child, or the threads-pool worker)
renews every lease the process holds in one script call per tick, so a run
costs no thread and no extra round trip. When a renewal finds a lease gone
(a Replace claim failed the run, or the sweeper recovered it elsewhere), the
run is interrupted. For the threads pool, which Celery does not time-limit,
the keeper also enforces the soft and hard limits.

Fencing: a lease is good until `lease_seconds` after the last renewal Redis
confirmed (the request was sent at `confirmed_at`, so Redis's expiry is no
earlier). A process that cannot renew (Redis unreachable from it alone) stops
the run once `lease_seconds - renew_seconds` pass without a confirmation, and
kills itself if the run is still executing shortly before the lease can expire:
the sweeper elsewhere recovers the run only after expiry, so the recovered copy
never runs beside this one. Renewals run in a thread of their own with socket
timeouts, so a hung Redis never delays the fence.

Interrupting is pool-specific:
- prefork: SIGUSR2 to the child itself; the handler raises in the main thread
  (which runs the task), so even a blocking `sleep` or socket read is
  interrupted; a run that ignores it is killed with its process after a grace.
- threads: an asynchronous exception in the run's thread, which lands at the
  next Python bytecode; a thread blocked inside C code cannot be interrupted
  until that call returns, and is never killed.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

import redis
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from beatkeeper_core.contract import RunEnvelope
from beatkeeper_core.runs import HeldLease, RunRegistry
from beatkeeper_worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class RunStopped(BaseException):
    """Raised inside a run whose lease was taken away (replaced or recovered elsewhere).

    A BaseException, so a task's `except Exception` does not swallow it.
    """


INTERRUPTS: tuple[type[BaseException], ...] = (
    RunStopped,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)


@dataclass(eq=False)
class Lease:
    held: HeldLease
    thread_id: int
    soft_at: float | None = None  # monotonic deadlines, enforced here for the threads pool
    hard_at: float | None = None
    active: bool = True  # the run's code is still executing
    soft_sent: bool = False
    hard_sent: bool = False
    lost_at: float | None = None
    envelope: RunEnvelope | None = None  # for records written on the run's behalf
    started_at: dt.datetime | None = None
    # Monotonic time the last confirmed write of the lease was sent (the claim, then
    # each renewal): Redis's expiry is at least `lease_seconds` after it.
    confirmed_at: float = field(default_factory=time.monotonic)
    fenced: bool = False  # stopped because it could not be renewed

    @property
    def renewable(self) -> bool:
        return self.lost_at is None and not self.hard_sent


class Interrupter(Protocol):
    def prepare(self) -> None:
        """Called in the run's thread before it starts."""

    def interrupt(self, lease: Lease, exc: type[BaseException]) -> None: ...

    def clear(self, lease: Lease) -> None: ...


class ThreadInterrupter:
    """Asynchronous exceptions into the run's thread (threads pool)."""

    def prepare(self) -> None:
        pass

    def interrupt(self, lease: Lease, exc: type[BaseException]) -> None:
        _set_async_exc(lease.thread_id, exc)

    def clear(self, lease: Lease) -> None:
        _set_async_exc(lease.thread_id, None)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None
    )


class SignalInterrupter:
    """SIGUSR2 to this process, raising in its main thread (prefork children)."""

    def __init__(self) -> None:
        self._pending: type[BaseException] | None = None
        self._installed_pid = 0

    def prepare(self) -> None:
        # Runs in the child's main thread, the only one that may set handlers.
        if self._installed_pid != os.getpid():
            signal.signal(signal.SIGUSR2, self._handle)
            self._installed_pid = os.getpid()

    def interrupt(self, lease: Lease, exc: type[BaseException]) -> None:
        self._pending = exc
        os.kill(os.getpid(), signal.SIGUSR2)

    def clear(self, lease: Lease) -> None:
        self._pending = None

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        exc, self._pending = self._pending, None
        if exc is not None:
            raise exc()


class LeaseKeeper:
    """The per-process threads that renew leases and enforce stops, fences and deadlines."""

    def __init__(
        self,
        registry: RunRegistry,
        *,
        renew_seconds: float,
        interrupter: Interrupter,
        lease_seconds: float | None = None,
        on_hard_limit: Callable[[Lease], None] | None = None,
        kill_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        die: Callable[[], None] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self._registry = registry
        self._renew_seconds = renew_seconds
        # None: no fence (unit tests of renewal alone); workers always pass it.
        self._lease_seconds = lease_seconds
        self._interrupter = interrupter
        self._on_hard_limit = on_hard_limit
        self._kill_after = kill_after  # None: never kill for an ignored stop (threads pool)
        self._clock = clock
        self._die = die or _kill_this_process
        self._leases: dict[str, Lease] = {}  # by owner token
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pid = 0

    @contextmanager
    def hold(self, lease: Lease) -> Iterator[Lease]:
        """Keep `lease` renewed (and its run interruptible) while the block runs."""
        self._ensure_threads()
        self._interrupter.prepare()
        with self._lock:
            self._leases[lease.held.owner] = lease
        self._wake.set()
        try:
            yield lease
        finally:
            self._release(lease)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def _release(self, lease: Lease) -> None:
        # An interrupt sent just before `active` turned false may land in here;
        # each is sent once, so retrying finishes, and no lease is left behind.
        while True:
            try:
                with self._lock:
                    lease.active = False
                    self._interrupter.clear(lease)
                    self._leases.pop(lease.held.owner, None)
                return
            except INTERRUPTS:
                continue

    def _ensure_threads(self) -> None:
        if self._pid == os.getpid() and all(thread.is_alive() for thread in self._threads):
            return
        self._pid = os.getpid()
        self._threads = [
            threading.Thread(target=self._renew_loop, name="beatkeeper-renew", daemon=True),
            threading.Thread(target=self._enforce_loop, name="beatkeeper-leases", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _renew_loop(self) -> None:
        while True:
            time.sleep(self._renew_seconds)
            try:
                self._renew(self._clock())
            except Exception:
                # A dead renewer would let every lease of this process expire.
                log.exception("lease renewal tick failed")

    def _enforce_loop(self) -> None:
        while True:
            self._wake.wait(max(self._next_deadline() - self._clock(), 0))
            self._wake.clear()
            try:
                self._enforce(self._clock())
            except Exception:
                log.exception("lease keeper tick failed")

    def _next_deadline(self) -> float:
        deadlines = [self._clock() + self._renew_seconds]
        for lease in self.held():
            if lease.soft_at is not None and not lease.soft_sent:
                deadlines.append(lease.soft_at)
            if lease.hard_at is not None and not lease.hard_sent:
                deadlines.append(lease.hard_at)
            if lease.lost_at is not None and self._kill_after is not None:
                deadlines.append(lease.lost_at + self._kill_after)
            deadlines += [at for at in self._fence_times(lease) if at is not None]
        return min(deadlines)

    def _fence_times(self, lease: Lease) -> tuple[float | None, float | None]:
        """When to stop an unconfirmed lease's run, and when to kill the process if it runs on."""
        if self._lease_seconds is None or (not lease.renewable and not lease.fenced):
            return None, None
        expires = lease.confirmed_at + self._lease_seconds
        stop_at = expires - self._renew_seconds
        return (None if lease.fenced else stop_at), expires - min(1.0, self._renew_seconds / 2)

    def _renew(self, now: float) -> None:
        renewable = [lease for lease in self.held() if lease.renewable]
        if not renewable:
            return
        try:
            lost = set(self._registry.renew(lease.held for lease in renewable))
        except redis.RedisError:
            # Retried next tick; past the fence the run stops (see the module docstring).
            log.warning("lease renewal failed", exc_info=True)
            if self.metrics is not None:
                self.metrics.renewals_failed.inc()
            return
        for lease in renewable:
            if lease.held.run_id in lost:
                log.warning("lease lost, stopping run %s", lease.held.run_id)
                lease.lost_at = self._clock()
                self._interrupt(lease, RunStopped)
            else:
                lease.confirmed_at = max(lease.confirmed_at, now)
        self._wake.set()

    def _enforce(self, now: float) -> None:
        for lease in self.held():
            if lease.soft_at is not None and not lease.soft_sent and now >= lease.soft_at:
                lease.soft_sent = True
                self._interrupt(lease, SoftTimeLimitExceeded)
            if lease.hard_at is not None and not lease.hard_sent and now >= lease.hard_at:
                lease.hard_sent = True
                self._hard_limit(lease)
            self._fence(lease, now)
            if (
                self._kill_after is not None
                and lease.lost_at is not None
                and lease.active
                and now >= lease.lost_at + self._kill_after
            ):
                log.error("run %s ignored its stop; killing this process", lease.held.run_id)
                self._die()

    def _fence(self, lease: Lease, now: float) -> None:
        stop_at, kill_at = self._fence_times(lease)
        if stop_at is not None and now >= stop_at:
            log.error(
                "lease of run %s not confirmed for %.1f s (Redis unreachable?): stopping the "
                "run before the lease can expire and the run is recovered elsewhere",
                lease.held.run_id,
                now - lease.confirmed_at,
            )
            lease.fenced = True
            lease.lost_at = now
            self._interrupt(lease, RunStopped)
        elif lease.fenced and lease.active and kill_at is not None and now >= kill_at:
            log.error("fenced run %s still executing; killing this process", lease.held.run_id)
            self._die()

    def _hard_limit(self, lease: Lease) -> None:
        if self._on_hard_limit is not None:
            try:
                self._on_hard_limit(lease)
            except redis.RedisError:
                log.exception("could not record the hard time limit of %s", lease.held.run_id)
        self._interrupt(lease, TimeLimitExceeded)

    def _interrupt(self, lease: Lease, exc: type[BaseException]) -> None:
        with self._lock:
            if lease.active:
                self._interrupter.interrupt(lease, exc)


def _kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
