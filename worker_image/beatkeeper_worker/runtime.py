"""Per-process wiring of one Celery app: its settings, Redis client, registry and keeper.

Prefork children inherit the app from the worker's main process by fork, but
not its sockets or threads, so the Redis client, the registry and the lease
keeper are built lazily in each process that uses them (keyed by pid).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from beatkeeper_core.settings import TlsVerify, WorkerSettings
from beatkeeper_worker import metrics
from beatkeeper_worker.execution import Executor, record_threads_hard_limit
from beatkeeper_worker.keys import KeySpace, key_space
from beatkeeper_worker.leases import LeaseKeeper, SignalInterrupter, ThreadInterrupter
from beatkeeper_worker.runs import RunRegistry

_RUNTIMES: weakref.WeakKeyDictionary[Any, WorkerRuntime] = weakref.WeakKeyDictionary()


def redis_options(settings: WorkerSettings) -> dict[str, str]:
    """redis-py keyword arguments for the broker's Redis (TLS for rediss:// URLs)."""
    return settings.tls.redis_options(settings.broker_url)


def redis_client(settings: WorkerSettings, *, single_connection: bool = False) -> redis.Redis:
    """A client for the broker's Redis.

    `single_connection` skips the connection pool's per-command bookkeeping (its
    liveness check alone costs more system calls than the command): right for a
    process that runs one task at a time. Every call times out after a renewal
    period: an unreachable Redis is an error to handle, never a hang.
    """
    return redis.Redis.from_url(
        settings.broker_url,
        health_check_interval=30,
        socket_keepalive=True,
        socket_timeout=settings.renew_seconds,
        socket_connect_timeout=settings.renew_seconds,
        single_connection_client=single_connection,
        **redis_options(settings),
    )


@dataclass
class _ProcessState:
    pid: int
    registry: RunRegistry
    keeper: LeaseKeeper | None = None
    executor: Executor | None = None
    tenants: dict[str, RunRegistry] = field(default_factory=dict)


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

    def registry_for(self, namespace: str) -> RunRegistry:
        """The registry of a namespace's key space, on this process's connection (beat
        and the operator, which hold the administrative credential, under tenancy)."""
        state = self._process()
        with self._lock:
            found = state.tenants.get(namespace)
            if found is None:
                found = state.tenants[namespace] = self._registry_on(
                    state.registry.client, key_space(namespace)
                )
            return found

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
    """The app's runtime; apps not built by `create_app` (beat) get one from their config."""
    runtime = _RUNTIMES.get(app)
    if runtime is None:
        runtime = register_runtime(app, _settings_from_conf(app.conf))
    return runtime


def _settings_from_conf(conf: Any) -> WorkerSettings:
    ssl_options = conf.broker_use_ssl if isinstance(conf.broker_use_ssl, dict) else {}
    paths = {
        name: Path(value) if value else None
        for name, value in (
            ("ca", ssl_options.get("ssl_ca_certs")),
            ("cert", ssl_options.get("ssl_certfile")),
            ("key", ssl_options.get("ssl_keyfile")),
        )
    }
    return WorkerSettings(
        broker_url=str(conf.broker_url),
        tls_verify=_verify_mode(ssl_options.get("ssl_cert_reqs")),
        tls_ca_file=paths["ca"],
        tls_cert_file=paths["cert"],
        tls_key_file=paths["key"],
    )


def _verify_mode(value: object) -> TlsVerify:
    # Celery takes ssl.CERT_* constants (an IntEnum) or their names.
    if isinstance(value, str):
        value = {"none": 0, "optional": 1}.get(value.lower().removeprefix("cert_"), 2)
    if value == 0:
        return "none"
    return "optional" if value == 1 else "required"
