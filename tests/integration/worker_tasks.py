"""Tasks the worker integration tests schedule; workers load them via BEATKEEPER_TASK_MODULES.

Each counts its executions in Redis (`<key>` at start, `<key>:done` at the
end), so a test can tell how often a run really executed.
"""

from __future__ import annotations

import os
import time

import redis
from celery import current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded

_CLIENTS: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    # One client per process: prefork children must not share the parent's sockets.
    pid = os.getpid()
    if pid not in _CLIENTS:
        _CLIENTS[pid] = redis.Redis.from_url(current_app.conf.broker_url)
    return _CLIENTS[pid]


def _nap(seconds: float, *, ignore_soft: bool) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(min(left, 0.05))
        except SoftTimeLimitExceeded:
            if not ignore_soft:
                raise


@shared_task(name="bk_test.work")  # type: ignore[untyped-decorator]
def work(
    key: str,
    seconds: float = 0.0,
    fail_times: int = 0,
    message: str = "boom",
    ignore_soft: bool = False,
) -> int:
    """Count, nap in short steps, fail while executions <= fail_times, count done."""
    client = _redis()
    executions = int(client.incr(key))
    try:
        _nap(seconds, ignore_soft=ignore_soft)
    finally:
        client.set(f"{key}:ended", repr(time.time()))
    if executions <= fail_times:
        raise ValueError(message)
    client.incr(f"{key}:done")
    return executions


@shared_task(name="bk_test.block")  # type: ignore[untyped-decorator]
def block(key: str, seconds: float) -> None:
    """One long blocking sleep (a C call that only a signal interrupts)."""
    client = _redis()
    client.incr(key)
    try:
        time.sleep(seconds)
    finally:
        client.set(f"{key}:ended", repr(time.time()))
    client.incr(f"{key}:done")


@shared_task(name="bk_test.stubborn")  # type: ignore[untyped-decorator]
def stubborn(key: str, seconds: float) -> None:
    """Swallows every interrupt (even BaseException): only killing its process stops it."""
    client = _redis()
    client.incr(key)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except BaseException:
            client.incr(f"{key}:ignored")
            continue
    client.incr(f"{key}:done")


def _tick_file(path: str, seconds: float, *, stubborn: bool) -> None:
    """Append `<worker pid> <time>` to `path` every 20 ms: executions seen outside Redis."""
    deadline = time.monotonic() + seconds
    with open(path, "a", buffering=1) as out:
        while time.monotonic() < deadline:
            try:
                out.write(f"{os.getppid()}:{os.getpid()} {time.time():.3f}\n")
                time.sleep(0.02)
            except BaseException:
                if not stubborn:
                    raise


@shared_task(name="bk_test.ticks")  # type: ignore[untyped-decorator]
def ticks(path: str, seconds: float) -> None:
    """Ticks into a file (no Redis: it must run where Redis is cut off)."""
    _tick_file(path, seconds, stubborn=False)


@shared_task(name="bk_test.stubborn_ticks")  # type: ignore[untyped-decorator]
def stubborn_ticks(path: str, seconds: float) -> None:
    """Ticks and swallows every interrupt: only killing its process stops it."""
    _tick_file(path, seconds, stubborn=True)


@shared_task(name="bk_test.reach")  # type: ignore[untyped-decorator]
def reach(keys: list[str], channels: list[str]) -> int:
    """Try every key and channel with this worker's own Redis credential: read, write
    and delete each key, publish to and subscribe to each channel. Raises if Redis
    allowed any of it; returns how many refusals (NOPERM) it saw."""
    client = redis.Redis.from_url(current_app.conf.broker_url)
    attempts = [
        *(lambda k=key: client.type(k) for key in keys),
        *(lambda k=key: client.get(k) for key in keys),
        *(lambda k=key: client.set(k, "forged") for key in keys),
        *(lambda k=key: client.delete(k) for key in keys),
        *(lambda k=key: client.eval("return redis.call('TYPE', KEYS[1])", 1, k) for key in keys),
        *(lambda c=channel: client.publish(c, "forged") for channel in channels),
        lambda: client.keys("*"),
        lambda: client.scan(0),
        lambda: client.execute_command("ACL", "LIST"),
        lambda: client.config_get("*"),
    ]
    refused = 0
    allowed = []
    for number, attempt in enumerate(attempts):
        try:
            attempt()
        except redis.exceptions.NoPermissionError:
            refused += 1
        except redis.exceptions.ResponseError as error:
            if "NOPERM" not in str(error):
                raise
            refused += 1
        else:
            allowed.append(number)
    pubsub = client.pubsub()
    for channel in channels:
        try:
            pubsub.subscribe(channel)
            pubsub.get_message(timeout=1)  # the reply to SUBSCRIBE, or its error
        except (redis.exceptions.NoPermissionError, redis.exceptions.ResponseError):
            refused += 1
        else:
            allowed.append(f"subscribe {channel}")
    client.close()
    if allowed:
        raise AssertionError(f"Redis allowed attempts {allowed} of {len(attempts)}")
    return refused
