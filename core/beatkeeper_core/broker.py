"""The broker's Redis, as every program connects to it: redis-py clients, Celery's broker
settings, and the run registries of each key space.

The operator, beat and the worker all reach one Redis, with one URL and one set of TLS
options (`settings.RedisTls`); this module turns them into a redis-py client and into
Celery's `broker_url`/`broker_use_ssl`, so a TLS option means the same in every program.
Celery's own configuration (JSON only, no result backend, UTC) is here too: a message
the operator or beat builds must be one the worker accepts.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import redis

from beatkeeper_core import keys, runs
from beatkeeper_core.keys import KeySpace
from beatkeeper_core.runs import RunRegistry
from beatkeeper_core.settings import RedisTls

_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def redis_client(
    url: str, tls: RedisTls, *, timeout: float, single_connection: bool = False
) -> redis.Redis:
    """A client for the broker's Redis; every call times out after `timeout` seconds (an
    unreachable Redis is an error to handle, never a hang).

    `single_connection` skips the connection pool's per-command bookkeeping (its liveness
    check alone costs more system calls than the command): right for a process that runs
    one task at a time.
    """
    return redis.Redis.from_url(
        url,
        health_check_interval=30,
        socket_keepalive=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        single_connection_client=single_connection,
        **tls.redis_options(url),
    )


def broker_ssl(url: str, tls: RedisTls) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl`: the same options, the verification as ssl's constant."""
    options: dict[str, Any] = dict(tls.redis_options(url))
    if not options:
        return None
    options["ssl_cert_reqs"] = _CERT_REQS[tls.verify]
    return options


def celery_config(
    url: str, tls: RedisTls, *, transport_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What every Beatkeeper Celery app shares: the broker, JSON only, no result backend
    (outcomes go to the run-record stream), UTC."""
    return {
        "broker_url": url,
        "broker_use_ssl": broker_ssl(url, tls),
        "broker_transport_options": dict(transport_options or {}),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "enable_utc": True,
        "timezone": "UTC",
    }


def celery_app(url: str, tls: RedisTls, *, main: str) -> Any:
    """A Celery app that publishes runs to the broker (the operator's and beat's)."""
    from celery import Celery

    app = Celery(main)
    app.conf.update(celery_config(url, tls))
    return app


class Registries:
    """The run registry of each key space, on one client: beat and the operator, which hold
    the administrative credential, reach every namespace's key space under Redis tenancy
    (the root one otherwise)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        tenancy: bool,
        retention_seconds: float = runs.DEFAULT_RETENTION_SECONDS,
        records_maxlen: int = runs.DEFAULT_RECORDS_MAXLEN,
    ) -> None:
        self.client = client
        self.tenancy = tenancy
        self.retention_seconds = retention_seconds
        self.records_maxlen = records_maxlen
        self._lock = threading.Lock()
        self._by_space: dict[str, RunRegistry] = {}

    def space(self, namespace: str) -> KeySpace:
        return keys.key_space(namespace) if self.tenancy else keys.ROOT

    def for_namespace(self, namespace: str) -> RunRegistry:
        """The registry a namespace's runs are in."""
        space = self.space(namespace)
        with self._lock:
            found = self._by_space.get(space.prefix)
            if found is None:
                found = self._by_space[space.prefix] = RunRegistry(
                    self.client,
                    retention_seconds=self.retention_seconds,
                    records_maxlen=self.records_maxlen,
                    space=space,
                )
            return found
