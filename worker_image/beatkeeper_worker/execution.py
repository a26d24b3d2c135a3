"""Executing one delivery of `beatkeeper.run`: refuse, claim, run the task, settle.

Order of decisions for a delivery:
1. the envelope must validate (else it is logged and dropped: there is no run
   to record it against);
2. the target must be allowed by the pool's globs and registered, else the run
   is `Failed` (`TaskNotAllowed`, `TaskNotRegistered`) without retries;
3. the claim script drops duplicates (finished run, live lease of another
   owner, older attempt), records `Missed` for a first attempt past its
   starting deadline, `Skipped` under Forbid, fails the runs a Replace
   displaces, and otherwise takes the lease and records `Running`;
4. the user's task runs in this process (so the entry task's time limits apply
   to it) while the lease keeper renews the lease;
5. the outcome (`Succeeded`, `Retrying` with the next attempt queued in the
   retries index, or `Failed`) is written only if this owner still holds the
   lease, in one script with its record.

A hard time limit kills a prefork child before it can settle, so the worker's
main process records it (`record_hard_limit`, from the entry task's request);
for the threads pool the lease keeper does (`record_threads_hard_limit`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from pydantic import ValidationError

from beatkeeper_core import records
from beatkeeper_core.contract import (
    ENTRY_TASK,
    RunEnvelope,
    RunRecord,
    RunState,
    allowed_task_globs,
)
from beatkeeper_core.runs import Claim, HeldLease, Replaced, RunRegistry
from beatkeeper_worker import metrics
from beatkeeper_worker.errors import PermanentError
from beatkeeper_worker.leases import Lease, LeaseKeeper, RunStopped
from beatkeeper_worker.retries import RetryPlan, plan_retry
from beatkeeper_worker.settings import WorkerSettings
from beatkeeper_worker.taskevents import TaskEvents

log = logging.getLogger(__name__)

_CURRENT: contextvars.ContextVar[RunEnvelope | None] = contextvars.ContextVar(
    "beatkeeper_current_run", default=None
)

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def current_run() -> RunEnvelope | None:
    """The envelope of the run executing in this thread, if any (for task code)."""
    return _CURRENT.get()


@dataclass(frozen=True)
class Outcome:
    record: RunRecord
    retry: RetryPlan | None = None


class Executor:
    """Runs deliveries of the entry task inside one pool process."""

    def __init__(
        self,
        app: Any,
        settings: WorkerSettings,
        registry: RunRegistry,
        keeper: LeaseKeeper,
        *,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self._app = app
        self._settings = settings
        self._registry = registry
        self._keeper = keeper
        self._clock = clock
        self._rng = rng
        self._queue = settings.queue
        self._metrics = metrics.worker() if settings.metrics_port else None
        self._events: TaskEvents | None = None

    def execute(self, payload: object, worker: str) -> str:
        envelope = parse_envelope(payload)
        if envelope is None:
            return "invalid"
        if self._events is None:
            self._events = TaskEvents(self._app, worker)
        now = self._clock()
        owner = f"{worker}:{os.getpid()}:{uuid.uuid4().hex}"
        claimed_at = time.monotonic()  # the lease is good until lease_seconds after this
        try:
            claim = self._claim(envelope, owner, worker, now)
        except redis.RedisError as exc:
            # Back on the queue. A claim that did land holds a lease that
            # nobody renews, which the sweeper recovers.
            log.warning("claim of %s failed (%s); requeueing", envelope.run_id, exc)
            time.sleep(1)
            raise Reject(str(exc), requeue=True) from exc
        if claim.status != "claimed":
            log.debug("delivery of %s not executed: %s", envelope.run_id, claim.detail)
            if self._metrics is not None and claim.status == "dropped":
                self._metrics.dropped.labels(claim.detail).inc()
            return f"{claim.status}:{claim.detail}"
        if claim.replaced:
            self._registry.append(replaced_records(envelope, claim.replaced, now))
        return self._attempt(envelope, owner, worker, now, claimed_at)

    def _claim(self, envelope: RunEnvelope, owner: str, worker: str, now: dt.datetime) -> Claim:
        allowed = allowed_task_globs(self._settings.allowed_tasks, self._settings.task_modules)
        refusal = refusal_of(envelope.task.name, allowed, self._app.tasks)
        if refusal is not None:
            reason, message = refusal
            log.warning("run %s refused: %s", envelope.run_id, message)
            if self._metrics is not None:
                self._metrics.refused.labels(reason).inc()
            if self._events is not None:
                self._events.received(envelope)
                self._events.failed(envelope, f"{reason}: {message}")
            record = records.failed(envelope, now, reason, message, worker=worker)
            return self._registry.finish(envelope, self._queue, record)
        return self._registry.claim(
            envelope,
            self._queue,
            owner,
            records.running(envelope, now, worker),
            missed=missed_record(envelope, now),
            skipped=skipped_record(envelope, now),
            superseded=superseded_records(envelope, now),
        )

    def _attempt(
        self, envelope: RunEnvelope, owner: str, worker: str, started: dt.datetime, claimed: float
    ) -> str:
        task = self._app.tasks[envelope.task.name]
        soft_at, hard_at = self._deadlines(envelope)
        lease = Lease(
            held=HeldLease(envelope.run_id, owner, self._queue, envelope.object_key),
            thread_id=threading.get_ident(),
            soft_at=soft_at,
            hard_at=hard_at,
            envelope=envelope,
            started_at=started,
            confirmed_at=claimed,
        )
        token = _CURRENT.set(envelope)
        label = self._observe_start(envelope)
        began = time.monotonic()
        try:
            with self._keeper.hold(lease):
                # `run`, not `__call__`: no request context to build; the entry
                # task's request (and time limits) are the ones that apply.
                task.run(*envelope.task.args, **envelope.task.kwargs)
        except RunStopped:
            log.warning("run %s stopped: its lease was taken over", envelope.run_id)
            self._observe_stop(envelope)
            return "stopped"
        except (SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
            outcome = self._time_limited(envelope, started, worker, exc)
        except PermanentError as exc:
            outcome = self._failed(envelope, started, worker, type(exc).__name__, exc)
        except Exception as exc:
            outcome = self._failure(envelope, started, worker, exc)
        else:
            outcome = Outcome(records.succeeded(envelope, started, self._clock(), worker))
        finally:
            _CURRENT.reset(token)
        ran = time.monotonic() - began
        result = self._settle(envelope, owner, outcome, lease.confirmed_at)
        self._observe_end(envelope, label, outcome, result, ran)
        return result

    # Metrics and task events: what monitoring sees of an attempt.

    def _observe_start(self, envelope: RunEnvelope) -> str:
        label = metrics.task_label(envelope.task.name, self._app.tasks)
        if self._metrics is not None:
            self._metrics.runs_started.labels(label).inc()
        if self._events is not None:
            self._events.received(envelope)
            self._events.started(envelope)
        return label

    def _observe_stop(self, envelope: RunEnvelope) -> None:
        if self._metrics is not None:
            self._metrics.leases_lost.inc()
        if self._events is not None:
            self._events.revoked(envelope)

    def _observe_end(
        self, envelope: RunEnvelope, label: str, outcome: Outcome, result: str, ran: float
    ) -> None:
        written = result == outcome.record.state.value
        if self._metrics is not None:
            self._metrics.run_duration.labels(label).observe(ran)
            if written:
                self._metrics.runs_finished.labels(label, result).inc()
                if outcome.retry is not None:
                    self._metrics.retries.labels(label).inc()
        if self._events is not None and written:
            self._report(envelope, outcome, ran)

    def _report(self, envelope: RunEnvelope, outcome: Outcome, ran: float) -> None:
        """The attempt's last task event, once its outcome is written."""
        assert self._events is not None
        record = outcome.record
        if record.state is RunState.SUCCEEDED:
            self._events.succeeded(envelope, ran)
        elif record.state is RunState.RETRYING:
            self._events.retried(envelope, record.message)
        else:
            self._events.failed(envelope, f"{record.reason}: {record.message}")

    def _deadlines(self, envelope: RunEnvelope) -> tuple[float | None, float | None]:
        # The prefork pool enforces the limits itself (they travel in the message).
        if self._settings.pool == "prefork":
            return None, None
        start, policy = time.monotonic(), envelope.policy
        return (
            start + policy.soft_seconds if policy.soft_seconds else None,
            start + policy.hard_seconds if policy.hard_seconds else None,
        )

    def _time_limited(
        self, envelope: RunEnvelope, started: dt.datetime, worker: str, exc: BaseException
    ) -> Outcome:
        limit = envelope.policy.soft_seconds or envelope.policy.hard_seconds or 0
        message = f"time limit ({limit:g} s) exceeded: {records.describe(exc)}"
        return self._failed(envelope, started, worker, "TimeLimitExceeded", message)

    def _failure(
        self, envelope: RunEnvelope, started: dt.datetime, worker: str, exc: Exception
    ) -> Outcome:
        now = self._clock()
        plan = plan_retry(envelope, now, self._rng)
        message = records.describe(exc)
        if plan is not None:
            record = records.retrying(
                envelope,
                started=started,
                now=now,
                next_attempt_at=plan.at,
                message=message,
                worker=worker,
            )
            return Outcome(record, plan)
        attempts = envelope.attempt
        reason = "RetriesExhausted" if envelope.policy.retry.max_retries else type(exc).__name__
        return self._failed(
            envelope, started, worker, reason, f"{message} (attempt {attempts} of {attempts})"
        )

    def _failed(
        self,
        envelope: RunEnvelope,
        started: dt.datetime,
        worker: str,
        reason: str,
        message: str | BaseException,
    ) -> Outcome:
        text = records.describe(message) if isinstance(message, BaseException) else message
        return Outcome(
            records.failed(envelope, self._clock(), reason, text, started=started, worker=worker)
        )

    def _settle(
        self, envelope: RunEnvelope, owner: str, outcome: Outcome, confirmed_at: float
    ) -> str:
        """Write the outcome while the lease can still be ours (Redis may be away a while).

        Until a second before the lease can expire (`confirmed_at` plus the lease),
        a Redis error is retried: a short outage must not lose an outcome and make
        the run execute again elsewhere. Past that, the sweeper may recover the run,
        and the outcome is left to the copy that runs then.
        """
        retry = (outcome.retry.envelope, outcome.retry.delay) if outcome.retry else None
        give_up_at = confirmed_at + self._settings.lease_seconds - 1.0
        soft_limits = 0
        while True:
            try:
                written = self._registry.settle(
                    envelope, self._queue, owner, outcome.record, retry=retry
                )
                break
            except SoftTimeLimitExceeded:
                # A soft limit firing after the task returned must not lose the outcome.
                soft_limits += 1
                if soft_limits > 1:
                    written = False
                    break
            except redis.RedisError as error:
                if time.monotonic() >= give_up_at:
                    log.error("outcome of %s not written (%s); its lease runs out", envelope.run_id,
                              error)  # fmt: skip
                    return "unwritten"
                time.sleep(0.5)
        if not written:
            log.warning("outcome of %s discarded: the lease was lost", envelope.run_id)
            return "discarded"
        return outcome.record.state.value


def parse_envelope(payload: object) -> RunEnvelope | None:
    try:
        return RunEnvelope.model_validate(payload)
    except ValidationError as exc:
        log.error("invalid run envelope dropped: %s", records.short_message(str(exc)))
        return None


def refusal_of(name: str, allowed: tuple[str, ...], registered: Any) -> tuple[str, str] | None:
    """(reason, message) when the pool must not run task `name`, else None."""
    if name == ENTRY_TASK:
        return "TaskNotAllowed", f"task {name!r} cannot be the target of a run"
    if not any(fnmatchcase(name, pattern) for pattern in allowed):
        return (
            "TaskNotAllowed",
            f"task {name!r} is not allowed by this pool's allowedTasks ({', '.join(allowed)})",
        )
    if name not in registered:
        return (
            "TaskNotRegistered",
            f"task {name!r} is not registered in this worker; add the module that defines it "
            "to the pool's taskModules",
        )
    return None


def missed_record(envelope: RunEnvelope, now: dt.datetime) -> RunRecord | None:
    """`Missed` when a first attempt starts later than its starting deadline allows.

    The deadline counts from the run's due time (its slot plus the object's
    jitter), so jitter itself never makes a run Missed.
    """
    deadline = envelope.policy.starting_deadline_seconds
    if envelope.attempt != 1 or deadline is None:
        return None
    late = (now - envelope.due).total_seconds()
    if late <= deadline:
        return None
    return records.not_started(
        envelope,
        RunState.MISSED,
        now,
        "DeadlineExceeded",
        f"could start only {late:.0f} s after it was due; startingDeadlineSeconds is {deadline:g}",
    )


def skipped_record(envelope: RunEnvelope, now: dt.datetime) -> RunRecord | None:
    if envelope.policy.concurrency_policy.value != "Forbid":
        return None
    return records.not_started(
        envelope,
        RunState.SKIPPED,
        now,
        "ConcurrencyForbid",
        f"another run of {envelope.object_key} is still active (concurrencyPolicy Forbid)",
    )


def superseded_records(envelope: RunEnvelope, now: dt.datetime) -> tuple[RunRecord, RunRecord]:
    """What an older slot records when a newer run of its object is already active:
    Skipped if it never started, Failed if it did (its worker died, it was recovered)."""
    message = (
        f"a newer run of {envelope.object_key} is active "
        f"(concurrencyPolicy {envelope.policy.concurrency_policy.value})"
    )
    skipped = records.not_started(envelope, RunState.SKIPPED, now, "Superseded", message)
    failed = records.failed(envelope, now, "Superseded", message)
    return skipped, failed


def replaced_records(
    by: RunEnvelope, replaced: tuple[Replaced, ...], now: dt.datetime
) -> list[RunRecord]:
    out = []
    for run in replaced:
        envelope = run.envelope
        if run.was_retrying:
            # The registry already holds the next attempt's envelope; it never started.
            envelope = envelope.model_copy(update={"attempt": envelope.attempt - 1})
        message = f"replaced by run {by.run_id} (concurrencyPolicy Replace)"
        out.append(records.failed(envelope, now, "Replaced", message))
    return out


def record_hard_limit(
    registry: RunRegistry, queue: str, payload: object, owner_prefix: str, timeout: float
) -> bool:
    """Record a prefork child killed at its hard limit (runs in the main process)."""
    envelope = parse_envelope(payload)
    if envelope is None:
        return False
    record = records.failed(
        envelope,
        utcnow(),
        "TimeLimitExceeded",
        f"hard time limit ({timeout:g} s) exceeded; the task was killed",
    )
    return registry.settle(envelope, queue, owner_prefix, record, owner_prefix=True)


def record_threads_hard_limit(registry: RunRegistry, lease: Lease) -> None:
    """Record a threads-pool run past its hard limit; its thread is abandoned, not killed."""
    if lease.envelope is None:
        return
    limit = lease.envelope.policy.hard_seconds or 0
    record = records.failed(
        lease.envelope,
        utcnow(),
        "TimeLimitExceeded",
        f"hard time limit ({limit:g} s) exceeded; the thread pool cannot kill the task, "
        "so its thread was abandoned and its result will be discarded",
        started=lease.started_at,
    )
    registry.settle(lease.envelope, lease.held.queue, lease.held.owner, record)
