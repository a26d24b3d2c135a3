"""What this worker can run, told to the operator: the task names its image registers.

A bootstep in the worker's main process writes them under the worker's hostname
in `keys.registered_key(queue)` when the worker starts (after the task modules
were imported) and removes its field when the worker stops. The operator shows
the union in the pool's `status.registeredTasks`; admission warns when a
ScheduledTask names a task that the allowedTasks globs admit but that no worker
of the pool registers (its runs would fail with TaskNotRegistered).
Best effort: Redis being away at start-up only loses the warning.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from celery import bootsteps

from beatkeeper_core import keys
from beatkeeper_core.contract import ENTRY_TASK
from beatkeeper_worker.runtime import redis_client, runtime_for

log = logging.getLogger(__name__)


def registered_tasks(app: Any) -> list[str]:
    """The names a run may target in this worker (Celery's own tasks and the entry excluded)."""
    return sorted(
        name for name in app.tasks if not name.startswith("celery.") and name != ENTRY_TASK
    )


def announce(
    client: redis.Redis,
    queue: str,
    worker: str,
    tasks: list[str],
    space: keys.KeySpace = keys.ROOT,
) -> None:
    key = space.registered_key(queue)
    value = json.dumps({"tasks": tasks, "at": int(time.time() * 1000)})
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(key, worker, value)
        pipe.expire(key, keys.REGISTERED_TTL_SECONDS)
        pipe.execute()


class RegisteredTasksStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Announces the registered task names while the worker runs."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.client: redis.Redis | None = None
        self.queue = ""
        self.keys = keys.ROOT

    def start(self, worker: Any) -> None:
        runtime = runtime_for(worker.app)
        settings, self.keys = runtime.settings, runtime.keys
        self.queue = settings.queue
        if not self.queue:
            return
        self.client = redis_client(settings)
        try:
            announce(
                self.client,
                self.queue,
                worker.hostname,
                registered_tasks(worker.app),
                self.keys,
            )
        except redis.RedisError:
            log.warning("could not announce the registered tasks", exc_info=True)

    def stop(self, worker: Any) -> None:
        if self.client is None:
            return
        try:
            self.client.hdel(self.keys.registered_key(self.queue), worker.hostname)
        except redis.RedisError:
            log.warning("could not withdraw the registered tasks", exc_info=True)
        finally:
            self.client.close()
