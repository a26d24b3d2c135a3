"""Tasks the end-to-end tests schedule; worker processes load them via BEATKEEPER_TASK_MODULES."""

from __future__ import annotations

import os
import socket

import redis
from celery import current_app, shared_task

from beatkeeper_worker import current_run

_CLIENTS: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    pid = os.getpid()  # prefork children must not share the parent's sockets
    if pid not in _CLIENTS:
        _CLIENTS[pid] = redis.Redis.from_url(current_app.conf.broker_url)
    return _CLIENTS[pid]


@shared_task(name="e2e.count")  # type: ignore[untyped-decorator]
def count(key: str) -> int:
    """Count executions per run id under `key`, so tests can see duplicates."""
    run = current_run()
    client = _redis()
    client.hincrby(key, run.run_id if run else "?", 1)
    return int(client.incr(f"{key}:total"))


@shared_task(name="e2e.fail")  # type: ignore[untyped-decorator]
def fail(message: str = "always fails") -> None:
    raise RuntimeError(message)


@shared_task(name="e2e.flaky")  # type: ignore[untyped-decorator]
def flaky(succeed_on_attempt: int = 3) -> int:
    run = current_run()
    attempt = run.attempt if run else 1
    if attempt < succeed_on_attempt:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return attempt


@shared_task(name="e2e.slow")  # type: ignore[untyped-decorator]
def slow(key: str, seconds: float = 1.0) -> None:
    """Count starts and finishes per run id: a run killed mid-way shows started > finished."""
    import time

    run = current_run()
    ident = run.run_id if run else "?"
    client = _redis()
    client.hincrby(f"{key}:started", ident, 1)
    client.hset(f"{key}:host", ident, socket.gethostname())  # the pod, in a pod
    time.sleep(seconds)
    client.hincrby(f"{key}:finished", ident, 1)
