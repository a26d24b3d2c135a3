"""The Celery app of a worker pod, built from `WorkerSettings`.

Configuration choices (the broker's shared part is `beatkeeper_core.broker`):
- JSON only, everywhere; no result backend (outcomes go to the run-record stream).
- `acks_late` + `reject_on_worker_lost`: a killed process's message is redelivered;
  prefetch multiplier = the pool's prefetch (default 1).
- a long broker visibility timeout: recovering dead workers' runs is the lease
  sweeper's job, and whatever the broker redelivers early is dropped by the claim.
- task events on, so Flower and celery-exporter work unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from celery.worker.request import Request

from beatkeeper_core import broker, keys
from beatkeeper_core.contract import ENTRY_TASK
from beatkeeper_worker.builtins import register_builtins
from beatkeeper_worker.execution import record_hard_limit
from beatkeeper_worker.liveness import liveness_step
from beatkeeper_worker.registered import RegisteredTasksStep
from beatkeeper_worker.runtime import WorkerRuntime, register_runtime, runtime_for
from beatkeeper_worker.settings import WorkerSettings
from beatkeeper_worker.sweeper import SweeperStep

log = logging.getLogger(__name__)

# kombu's restore holds a Redis mutex: a worker killed while holding it must not stop
# every restore for kombu's default 5 minutes.
_RESTORE_MUTEX_SECONDS = 15


def transport_options(settings: WorkerSettings) -> dict[str, float | str]:
    options: dict[str, float | str] = {
        "visibility_timeout": settings.visibility_timeout_seconds,
        # kombu scans for overdue unacked messages every interval times throttle.
        "unacked_restore_interval": settings.restore_interval_seconds,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": _RESTORE_MUTEX_SECONDS,
    }
    if settings.tenant:
        # Every kombu key and channel (queues, unacked, bindings, events, remote
        # control) in the namespace's key space, which its Redis user is confined to.
        options["global_keyprefix"] = keys.tenant_prefix(settings.tenant)
    return options


def celery_config(settings: WorkerSettings) -> dict[str, Any]:
    shared = broker.celery_config(
        settings.broker_url, settings.tls, transport_options=transport_options(settings)
    )
    return {
        **shared,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": settings.prefetch,
        "worker_concurrency": settings.concurrency,
        "worker_pool": settings.pool,
        "task_default_queue": settings.queue or "celery",
        "worker_send_task_events": True,
        # A task-sent event would name the entry task, not the user's (see taskevents.py).
        "task_send_sent_event": False,
        # Keep running tasks through a broker blip: their leases say who owns
        # them, and the redelivery of an unacked message is dropped by the claim.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "imports": list(settings.task_modules),
    }


class RunRequest(Request):  # type: ignore[misc]
    """The entry task's request: records a hard time limit before Celery acks it."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._record_hard_limit(timeout)
        super().on_timeout(soft, timeout)

    def _record_hard_limit(self, timeout: float) -> None:
        runtime = runtime_for(self.task.app)
        args = self.args
        # The child's owner token starts with `<host>:<pid>:`; the parent knows both.
        try:
            record_hard_limit(
                runtime.registry(),
                runtime.settings.queue,
                args[0] if args else None,
                f"{self.hostname}:{self.worker_pid}:",
                timeout,
            )
        except redis.RedisError:
            log.exception("could not record the hard time limit of %s", self.id)


def register_entry_task(app: Any, runtime: WorkerRuntime) -> None:
    @app.task(  # type: ignore[untyped-decorator]
        name=ENTRY_TASK,
        bind=True,
        Request=RunRequest,
        ignore_result=True,
        typing=False,
        # The executor sends the task events, under the user's task name (taskevents.py).
        send_events=False,
    )
    def run(task: Any, envelope: object) -> str:
        return runtime.executor().execute(envelope, task.request.hostname)


def create_app(settings: WorkerSettings, *, main: str = "beatkeeper") -> Any:
    """A Celery app for `settings`, with the entry task, built-ins and bootsteps."""
    app = Celery(main)
    app.conf.update(celery_config(settings))
    runtime = register_runtime(app, settings)
    register_entry_task(app, runtime)
    register_builtins(app, settings.allowed_hosts)
    app.steps["worker"].add(SweeperStep)
    app.steps["worker"].add(RegisteredTasksStep)
    app.steps["consumer"].add(liveness_step())
    return app
