"""Per-process wiring of one Celery app: its settings, Redis client, registry and keeper.

Prefork children inherit the app from the worker's main process by fork, but
not its sockets or threads, so the Redis client, the registry and the lease
keeper are built lazily in each process that uses them (keyed by pid).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import redis

from beatkeeper_core import broker
from beatkeeper_core.keys import KeySpace, key_space
from beatkeeper_core.runs import RunRegistry
from beatkeeper_worker import metrics
from beatkeeper_worker.execution import Executor, record_threads_hard_limit
from beatkeeper_worker.leases import LeaseKeeper, SignalInterrupter, ThreadInterrupter
from beatkeeper_worker.settings import WorkerSettings

_RUNTIMES: weakref.WeakKeyDictionary[Any, WorkerRuntime] = weakref.WeakKeyDictionary()


def redis_client(settings: WorkerSettings, *, single_connection: bool = False) -> redis.Redis:
    """A client for the broker's Redis, whose calls time out after a renewal period."""
    return broker.redis_client(
        settings.broker_url,
        settings.tls,
        timeout=settings.renew_seconds,
        single_connection=single_connection,
    )


@dataclass
class _ProcessState:
    pid: int
    registry: RunRegistry
    keeper: LeaseKeeper | None = None
    executor: Executor | None = None


class WorkerRuntime:
    """What the tasks and bootsteps of one app share inside one process."""

    def __init__(self, app: Any, settings: WorkerSettings) -> None:
        self.app = app
        self.settings = settings
        self.interrupter = SignalInterrupter() if settings.pool == "prefork" else None
        self.keys = key_space(settings.tenant)
        self._state: _ProcessState | None = None
        self._lock = threading.Lock()

    def registry(self) -> RunRegistry:
        """The registry of this worker's own key space."""
        return self._process().registry

    def keeper(self) -> LeaseKeeper:
        state = self._process()
        with self._lock:
            if state.keeper is None:
                # Its own connection: a run's call to a hung Redis never holds up renewals.
                state.keeper = self._new_keeper(self._new_registry(), state.registry)
            return state.keeper

    def executor(self) -> Executor:
        state = self._process()
        if state.executor is None:
            state.executor = Executor(self.app, self.settings, state.registry, self.keeper())
        return state.executor

    def _process(self) -> _ProcessState:
        state = self._state
        if state is not None and state.pid == os.getpid():
            return state
        with self._lock:
            if self._state is None or self._state.pid != os.getpid():
                self._state = _ProcessState(pid=os.getpid(), registry=self._new_registry())
            return self._state

    def _new_registry(self) -> RunRegistry:
        client = redis_client(self.settings, single_connection=self.settings.pool == "prefork")
        return self._registry_on(client, self.keys)

    def _registry_on(self, client: redis.Redis, space: KeySpace) -> RunRegistry:
        return RunRegistry(
            client,
            lease_seconds=self.settings.lease_seconds,
            retention_seconds=self.settings.retention_seconds,
            records_maxlen=self.settings.records_maxlen,
            space=space,
        )

    def _new_keeper(self, renewals: RunRegistry, registry: RunRegistry) -> LeaseKeeper:
        counted = metrics.worker() if self.settings.metrics_port else None
        if self.interrupter is not None:
            # Killing the child makes its parent requeue the message (reject on
            # worker lost); the claim then drops it, as the run has finished.
            return LeaseKeeper(
                renewals,
                renew_seconds=self.settings.renew_seconds,
                lease_seconds=self.settings.lease_seconds,
                interrupter=self.interrupter,
                kill_after=self.settings.renew_seconds * 2,
                metrics=counted,
            )
        return LeaseKeeper(
            renewals,
            renew_seconds=self.settings.renew_seconds,
            lease_seconds=self.settings.lease_seconds,
            interrupter=ThreadInterrupter(),
            on_hard_limit=lambda lease: record_threads_hard_limit(registry, lease),
            metrics=counted,
        )


def register_runtime(app: Any, settings: WorkerSettings) -> WorkerRuntime:
    runtime = WorkerRuntime(app, settings)
    _RUNTIMES[app] = runtime
    return runtime


def runtime_for(app: Any) -> WorkerRuntime:
    """The runtime of an app built by `create_app`."""
    runtime = _RUNTIMES.get(app)
    if runtime is None:
        raise LookupError(f"{app!r} was not built by beatkeeper_worker.app.create_app")
    return runtime
