"""Delayed retries: when the next attempt is due, and moving due attempts to the queue.

A failed attempt's next envelope waits in the queue's retries sorted set, scored
by its due time (the settle script writes it with the outcome), never in the
broker as an ETA/countdown message: Celery redelivers those "again and again"
once the delay passes the visibility timeout. The sweeper promotes due ones:
publish first, then remove, so a crash in between publishes twice and the
claim drops the duplicate.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from beatkeeper_core.contract import RunEnvelope
from beatkeeper_core.runs import RunRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPlan:
    envelope: RunEnvelope  # the next attempt
    delay: float
    at: dt.datetime


def plan_retry(
    envelope: RunEnvelope, now: dt.datetime, rng: random.Random | None = None
) -> RetryPlan | None:
    """The next attempt after `envelope`'s attempt failed, or None when none is left."""
    policy = envelope.policy.retry
    if envelope.attempt > policy.max_retries:
        return None
    delay = policy.delay(envelope.attempt, rng)
    return RetryPlan(
        envelope=envelope.next_attempt(), delay=delay, at=now + dt.timedelta(seconds=delay)
    )


def promote_due(
    registry: RunRegistry, queue: str, send: Callable[[RunEnvelope], None], limit: int = 100
) -> int:
    """Publish every due retry of `queue`, then drop it from the index."""
    due = registry.due_retries(queue, limit)
    published: list[tuple[str, str]] = []
    unreadable: list[str] = []
    for envelope_json in due:
        try:
            envelope = RunEnvelope.model_validate_json(envelope_json)
        except ValidationError:
            # Written by an incompatible version: dropping it beats blocking the rest.
            log.error("unreadable retry envelope dropped: %.200s", envelope_json)
            unreadable.append(envelope_json)
            continue
        send(envelope)
        published.append((envelope_json, envelope.run_id))
    registry.promoted(queue, published)
    registry.forget_retries(queue, unreadable)
    return len(due)
