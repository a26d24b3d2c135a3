"""A plain Celery app for stock `redbeat.RedBeatScheduler`, the anchor of bench.fire_lateness.

Configured from the environment the benchmark sets (broker URL, redbeat prefix);
everything else is Celery's and redbeat's defaults (max loop interval 300 s,
lock timeout 5 x that), as a team running stock redbeat would have them.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("stock")
app.conf.update(
    broker_url=os.environ["BENCH_BROKER_URL"],
    redbeat_redis_url=os.environ["BENCH_BROKER_URL"],
    redbeat_key_prefix=os.environ.get("BENCH_REDBEAT_PREFIX", "redbeat:"),
    task_serializer="json",
    accept_content=["json"],
)


@app.task(name="bench.noop", ignore_result=True)  # type: ignore[untyped-decorator]
def noop(index: int) -> int:
    return index
