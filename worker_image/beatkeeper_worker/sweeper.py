"""The sweeper: recovers runs whose worker died, and promotes due retries.

A thread in every worker's main process ticks every `sweep_seconds`; a short
Redis lock per queue makes one of them the active sweeper, and another takes
over within a lock TTL when it dies. Each tick it:
- republishes every run of the queue whose lease expired without an outcome
  (its owner was killed), re-arming the index entry, so a republished message
  that is lost again is republished again;
- publishes every next attempt whose retry delay has passed;
- republishes every run published (or promoted) more than `unclaimed_seconds`
  ago that no worker has claimed: its message was lost between Redis and a
  worker (a connection cut while kombu's BRPOP reply was on its way).
All are at-least-once; the claim drops whatever is a duplicate. With the
default lease (15 s) and tick (1 s), a killed worker's run is republished
within about 16 s.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import bootsteps

from beatkeeper_core.contract import RunEnvelope
from beatkeeper_core.publish import send_run
from beatkeeper_core.runs import RunRegistry
from beatkeeper_worker import metrics
from beatkeeper_worker.metrics import WorkerMetrics
from beatkeeper_worker.retries import promote_due
from beatkeeper_worker.runtime import runtime_for

log = logging.getLogger(__name__)

REARM_LEASES = 4  # an unclaimed recovery is republished after this many lease periods


class Sweeper:
    """Recovery and retry promotion for one queue, while this process holds its lock."""

    def __init__(
        self,
        registry: Callable[[], RunRegistry],
        send: Callable[[RunEnvelope], None],
        queue: str,
        *,
        interval: float,
        lease_seconds: float,
        unclaimed_seconds: float = 60.0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._registry = registry
        self._send = send
        self._queue = queue
        self._interval = interval
        self._lease_seconds = lease_seconds
        self._unclaimed_seconds = unclaimed_seconds
        self._token = uuid.uuid4().hex
        self._lock_ttl = max(interval * 3, 2.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> tuple[int, int]:
        """One tick: (runs recovered or republished, retries promoted); (0, 0) when
        another process sweeps."""
        registry = self._registry()
        if not registry.hold_lock(
            registry.keys.sweeper_key(self._queue), self._token, self._lock_ttl
        ):
            return 0, 0
        expired = registry.recover_expired(
            self._queue, rearm_seconds=self._lease_seconds * REARM_LEASES
        )
        self._republish(expired, "its lease expired without an outcome")
        unclaimed = registry.unclaimed(self._queue, grace_seconds=self._unclaimed_seconds)
        self._republish(unclaimed, f"published {self._unclaimed_seconds:.0f} s ago, never claimed")
        promoted = promote_due(registry, self._queue, self._send)
        if self._metrics is not None:
            self._metrics.recovered.labels("lease-expired").inc(len(expired))
            self._metrics.recovered.labels("unclaimed").inc(len(unclaimed))
            self._metrics.retries_promoted.inc(promoted)
        return len(expired) + len(unclaimed), promoted

    def _republish(self, envelopes: list[str], why: str) -> None:
        for envelope_json in envelopes:
            envelope = RunEnvelope.model_validate_json(envelope_json)
            log.warning("republishing %s (attempt %d): %s", envelope.run_id, envelope.attempt, why)
            self._send(envelope)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="beatkeeper-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 5)
        try:
            registry = self._registry()
            registry.release_lock(registry.keys.sweeper_key(self._queue), self._token)
        except redis.RedisError:
            log.warning("could not release the sweeper lock", exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep()
            except Exception:
                # Redis or the broker away: try again next tick.
                log.exception("sweep failed")


def sweeper_for(app: Any) -> Sweeper:
    runtime = runtime_for(app)
    settings = runtime.settings

    def send(envelope: RunEnvelope) -> None:
        send_run(app, envelope, settings.queue)

    return Sweeper(
        runtime.registry,
        send,
        settings.queue,
        interval=settings.sweep_seconds,
        lease_seconds=settings.lease_seconds,
        unclaimed_seconds=settings.unclaimed_seconds,
        metrics=metrics.worker() if settings.metrics_port else None,
    )


class SweeperStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the sweeper thread in the worker's main process, after the pool forked."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.sweeper: Sweeper | None = None

    def start(self, worker: Any) -> None:
        self.sweeper = sweeper_for(worker.app)
        self.sweeper.start()

    def stop(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None
