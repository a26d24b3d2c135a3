"""The user code of `bench/chaos`: counts its completions outside the system under test.

`chaos.tick` sleeps a little and, as its last act, increments the run's count in
a separate Redis (`CHAOS_COUNTER_URL`, never faulted), so the benchmark knows
how often each slot really ran to the end, whatever the system recorded.
"""

from __future__ import annotations

import os
import socket
import time

import redis
from celery import shared_task

from beatkeeper_worker import current_run

_CLIENTS: dict[int, redis.Redis] = {}


def _counter() -> redis.Redis:
    pid = os.getpid()  # prefork children must not share the parent's sockets
    if pid not in _CLIENTS:
        _CLIENTS[pid] = redis.Redis.from_url(os.environ["CHAOS_COUNTER_URL"])
    return _CLIENTS[pid]


@shared_task(name="chaos.tick")  # type: ignore[untyped-decorator]
def tick(seconds: float = 0.2) -> None:
    run = current_run()
    ident = run.run_id if run else "?"
    started = time.time()
    time.sleep(seconds)
    counter = _counter()
    with counter.pipeline(transaction=True) as pipe:
        pipe.hincrby("chaos:completed", ident, 1)
        pipe.hset("chaos:started", ident, f"{started:.3f} {socket.gethostname()}:{os.getpid()}")
        pipe.execute()
