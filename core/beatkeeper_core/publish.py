"""Putting a run on a pool's queue: the message, its time limits, and its Pending record.

Two ways, one message:
- `send_run`/`publish_run`: Celery's own `app.send_task`, one run at a time (the worker's
  sweeper for retries and recoveries).
- `prepare_runs`/`push_runs`/`publish_runs`: the batch adapter (beat for due slots, the
  operator for run-now). It builds with Celery (`app.amqp.as_task_v2`) the message kombu's
  Redis transport would LPUSH, ahead of time, and pushes many of them, with their
  registry entries, in one script call. `bench/publish_path.py` measures why:
  publishing 10,000 runs due in the same second through `app.send_task` misses the
  target of p99 < 1 s (README, Benchmarks), the adapter meets it. That a stock Celery
  worker consumes what it builds is tested in tests/integration/test_stock_consumer.py.

The per-envelope time limits travel as the message's `soft_time_limit` and
`time_limit`, so the prefork pool enforces them on the entry task, which runs
the user's task in-process.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

from kombu import serialization

from beatkeeper_core import records
from beatkeeper_core.contract import ENTRY_TASK, RunEnvelope, RunPolicy
from beatkeeper_core.runs import EncodedRun, RunRegistry


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
    registry: RunRegistry,
    now: dt.datetime | None = None,
) -> bool:
    """Record the run `Pending` (once per run id) and publish it; True if it was new.

    A run id published again (beat failover, a retried publish) is published
    again, at least once, and the worker's claim drops the extra delivery.
    """
    record = records.pending(envelope, now or dt.datetime.now(dt.UTC))
    is_new = registry.mark_pending(envelope, queue, record)
    send_run(app, envelope, queue)
    return is_new


def _message(app: Any, envelope: RunEnvelope, queue: str) -> str:
    """The broker message kombu's Redis transport would LPUSH for `send_run`.

    Same headers and properties as `app.send_task` to the default exchange
    (routing key = queue), built without a round trip per message.
    """
    limits = time_limits(envelope.policy)
    task = app.amqp.as_task_v2(
        envelope.celery_task_id,
        ENTRY_TASK,
        args=[envelope.model_dump(mode="json", exclude_defaults=True)],
        time_limit=limits.get("time_limit"),
        soft_time_limit=limits.get("soft_time_limit"),
        reply_to=app.thread_oid,
        # Celery's saferepr of the envelope costs more than the rest of the
        # message; the run id is what Flower users look for anyway.
        argsrepr=f"[{envelope.run_id!r}]",
        kwargsrepr="{}",
    )
    content_type, encoding, payload = serialization.dumps(  # type: ignore[no-untyped-call]
        task.body, serializer="json"
    )
    properties = {
        **task.properties,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    return json.dumps(
        {
            "body": base64.b64encode(payload.encode()).decode(),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": task.headers,
            "properties": properties,
        }
    )


_PUSH_CHUNK = 500  # runs per script call: bounds how long one call blocks Redis (a few ms)


def prepare_runs(
    app: Any, runs: Sequence[tuple[RunEnvelope, str]], now: dt.datetime
) -> list[EncodedRun]:
    """Do the CPU work of publishing ahead of time (beat prepares runs due soon)."""
    return [
        EncodedRun.of(
            envelope, queue, records.pending(envelope, now), _message(app, envelope, queue)
        )
        for envelope, queue in runs
    ]


def push_runs(registry: RunRegistry, prepared: Sequence[EncodedRun]) -> list[bool]:
    """Register and enqueue prepared runs, a few script calls in all; True for each new run id.

    Beat fires thousands of entries in the same second; one LPUSH per message
    through kombu (plus a task-sent event each) made the last of 10,000 runs
    seconds late. Per run the registry comes first, then the message, as in
    `publish_run`; a run id already known is enqueued again and the worker's
    claim drops the extra delivery. Nothing here goes through kombu's producer,
    so Celery's `before_task_publish`/`after_task_publish` signals and the
    task-sent event do not fire for these runs (the operator learns of them
    from their Pending records).
    """
    fresh: list[bool] = []
    for start in range(0, len(prepared), _PUSH_CHUNK):
        chunk = prepared[start : start + _PUSH_CHUNK]
        fresh += registry.publish_batch(chunk)
    return fresh


def publish_runs(
    app: Any,
    runs: Sequence[tuple[RunEnvelope, str]],
    *,
    registry: RunRegistry,
    now: dt.datetime | None = None,
) -> list[bool]:
    """`publish_run` for many runs, a few round trips in all."""
    return push_runs(registry, prepare_runs(app, runs, now or dt.datetime.now(dt.UTC)))
