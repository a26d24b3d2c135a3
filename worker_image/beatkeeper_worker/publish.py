"""Putting a run on a pool's queue: the message, its time limits, and its Pending record.

Used by beat for each due slot and by the sweeper for retries and recoveries.
The per-envelope time limits travel as the message's `soft_time_limit` and
`time_limit`, so the prefork pool enforces them on the entry task, which runs
the user's task in-process.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from beatkeeper.contract import ENTRY_TASK, RunEnvelope, RunPolicy
from beatkeeper_worker import records
from beatkeeper_worker.runs import RunRegistry
from beatkeeper_worker.runtime import runtime_for


def time_limits(policy: RunPolicy) -> dict[str, float]:
    options: dict[str, float] = {}
    if policy.soft_seconds is not None:
        options["soft_time_limit"] = policy.soft_seconds
    if policy.hard_seconds is not None:
        options["time_limit"] = policy.hard_seconds
    return options


def send_run(app: Any, envelope: RunEnvelope, queue: str) -> None:
    """Publish the message for `envelope` without touching the registry."""
    app.send_task(
        ENTRY_TASK,
        # Defaults left out: a smaller message is cheaper for every process it crosses.
        args=[envelope.model_dump(mode="json", exclude_defaults=True)],
        queue=queue,
        task_id=envelope.celery_task_id,
        **time_limits(envelope.policy),
    )


def publish_run(
    app: Any,
    envelope: RunEnvelope,
    queue: str,
    *,
    registry: RunRegistry | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Record the run `Pending` (once per run id) and publish it; True if it was new.

    A run id published again (beat failover, a retried publish) is published
    again, at least once, and the worker's claim drops the extra delivery.
    """
    registry = registry or runtime_for(app).registry()
    record = records.pending(envelope, now or dt.datetime.now(dt.UTC))
    is_new = registry.mark_pending(envelope, queue, record)
    send_run(app, envelope, queue)
    return is_new
