"""The worker's settings (`BEATKEEPER_*` of a WorkerPool's pods; the operator's Deployment
builder sets them), read once at start-up by `WorkerSettings.from_env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from beatkeeper_core.runs import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_RECORDS_MAXLEN,
    DEFAULT_RETENTION_SECONDS,
)
from beatkeeper_core.settings import RedisTls, TlsVerify, csv, listen, path, port, positive

WorkerPoolKind = Literal["prefork", "threads"]


@dataclass(frozen=True)
class WorkerSettings:
    """One worker pod: its broker, queue, pool, policy limits and run-registry timings.

    The run registry lives in the broker's Redis, so one URL (and one set of TLS
    options) serves Celery and Beatkeeper's own keys. Durations are seconds; the
    lease, renew and sweep timings are exposed so tests can scale them down.
    """

    broker_url: str = "redis://127.0.0.1:6379/0"
    tls_verify: TlsVerify = "required"  # rediss:// only
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    queue: str = ""
    # With Redis tenancy: the pool's namespace, whose key space (`bk:<namespace>:`)
    # every key and channel of this worker is in. Empty: the root key space.
    tenant: str = ""
    pool: WorkerPoolKind = "prefork"
    concurrency: int = 2
    prefetch: int = 1
    task_modules: tuple[str, ...] = ()
    # Empty: the tasks of task_modules and the built-ins (contract.allowed_task_globs).
    allowed_tasks: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Short on purpose: a message delivered to a worker that died before it
    # started the run (prefetched, reserved) is back on the queue within this
    # plus the restore interval. Redelivering a run that is running, or is done,
    # is harmless: the claim drops the copy (the lease is held, or the run is
    # finished). Runs that did start are the lease sweeper's.
    visibility_timeout_seconds: float = 30.0
    restore_interval_seconds: float = 5.0  # how often kombu looks for them
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    renew_seconds: float = 5.0
    sweep_seconds: float = 1.0
    # A published run no worker has claimed after this long is republished: its
    # message may have been lost on the way to a worker (see runs.py, _UNCLAIMED).
    unclaimed_seconds: float = 60.0
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    records_maxlen: int = DEFAULT_RECORDS_MAXLEN
    liveness_file: Path = Path("/tmp/beatkeeper-worker.alive")  # noqa: S108 - an emptyDir
    liveness_seconds: float = 5.0
    log_level: str = "INFO"
    metrics_port: int = 0  # 0: no /metrics endpoint
    metrics_listen: str = "127.0.0.1"  # 0.0.0.0 in a pod
    # A prefork worker's processes count into files here (an emptyDir in the pod).
    metrics_dir: Path = Path("/tmp/beatkeeper-metrics")  # noqa: S108 - an emptyDir

    @property
    def tls(self) -> RedisTls:
        return RedisTls(self.tls_verify, self.tls_ca_file, self.tls_cert_file, self.tls_key_file)

    def __post_init__(self) -> None:
        if self.renew_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"BEATKEEPER_LEASE_RENEW_SECONDS={self.renew_seconds:g} must be at most half of "
                f"BEATKEEPER_LEASE_SECONDS={self.lease_seconds:g}, so one missed renewal "
                "does not lose a lease"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        pool = env.get("BEATKEEPER_WORKER_POOL", "prefork").strip() or "prefork"
        if pool not in ("prefork", "threads"):
            raise ValueError(f"BEATKEEPER_WORKER_POOL={pool!r}: use prefork or threads")
        tls = RedisTls.from_env(env)
        return cls(
            broker_url=env.get("BEATKEEPER_BROKER_URL", "").strip() or cls.broker_url,
            tls_verify=tls.verify,
            tls_ca_file=tls.ca_file,
            tls_cert_file=tls.cert_file,
            tls_key_file=tls.key_file,
            queue=env.get("BEATKEEPER_WORKER_QUEUE", "").strip(),
            tenant=env.get("BEATKEEPER_TENANT", "").strip(),
            pool=pool,  # type: ignore[arg-type]
            concurrency=int(positive(env, "BEATKEEPER_WORKER_CONCURRENCY", 2)),
            prefetch=int(positive(env, "BEATKEEPER_WORKER_PREFETCH", 1)),
            task_modules=csv(env, "BEATKEEPER_TASK_MODULES"),
            allowed_tasks=csv(env, "BEATKEEPER_ALLOWED_TASKS"),
            allowed_hosts=csv(env, "BEATKEEPER_ALLOWED_HOSTS"),
            visibility_timeout_seconds=positive(
                env, "BEATKEEPER_BROKER_VISIBILITY_TIMEOUT", cls.visibility_timeout_seconds
            ),
            restore_interval_seconds=positive(
                env, "BEATKEEPER_BROKER_RESTORE_INTERVAL", cls.restore_interval_seconds
            ),
            lease_seconds=positive(env, "BEATKEEPER_LEASE_SECONDS", cls.lease_seconds),
            renew_seconds=positive(env, "BEATKEEPER_LEASE_RENEW_SECONDS", cls.renew_seconds),
            sweep_seconds=positive(env, "BEATKEEPER_SWEEP_SECONDS", cls.sweep_seconds),
            unclaimed_seconds=positive(env, "BEATKEEPER_UNCLAIMED_SECONDS", cls.unclaimed_seconds),
            retention_seconds=positive(
                env, "BEATKEEPER_RUN_RETENTION_SECONDS", cls.retention_seconds
            ),
            records_maxlen=int(positive(env, "BEATKEEPER_RECORDS_MAXLEN", cls.records_maxlen)),
            liveness_file=path(env, "BEATKEEPER_LIVENESS_FILE", cls.liveness_file),
            liveness_seconds=positive(env, "BEATKEEPER_LIVENESS_SECONDS", cls.liveness_seconds),
            log_level=env.get("BEATKEEPER_WORKER_LOGLEVEL", "").strip().upper() or "INFO",
            metrics_port=port(env, "BEATKEEPER_METRICS_PORT"),
            metrics_listen=listen(env),
            metrics_dir=path(env, "BEATKEEPER_METRICS_DIR", cls.metrics_dir),
        )
