"""Typed settings: the only module that reads environment variables.

Every process Beatkeeper starts (operator, beat, worker, the local dev launcher)
builds one `Settings` from its environment at start-up and passes the parts it
needs down; nothing else looks at `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

_PACKAGE_DIR = Path(__file__).resolve().parent


def _repo_root() -> Path:
    # core/beatkeeper_core/settings.py -> the checkout root (editable installs only).
    return _PACKAGE_DIR.parent.parent


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = env.get(name, "").strip()
    return Path(value).expanduser() if value else default


@dataclass(frozen=True)
class DevSettings:
    """Where the local development environment keeps its caches and state."""

    cache_dir: Path
    state_dir: Path
    cluster_module: Path
    coredns_module: Path
    external_kubeconfig: Path | None
    redis_server: str
    crds_dir: Path
    kubeconform_module: Path = field(default_factory=lambda: _repo_root() / "tests" / "kubeconform")
    health_module: Path = field(default_factory=lambda: _repo_root() / "tests" / "health")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DevSettings:
        home = Path(env.get("HOME", "~")).expanduser()
        xdg_cache = _path(env, "XDG_CACHE_HOME", home / ".cache")
        xdg_state = _path(env, "XDG_STATE_HOME", home / ".local" / "state")
        kubeconfig = env.get("BEATKEEPER_KUBECONFIG", "").strip()
        return cls(
            cache_dir=_path(env, "BEATKEEPER_CACHE_DIR", xdg_cache / "beatkeeper"),
            state_dir=_path(env, "BEATKEEPER_STATE_DIR", xdg_state / "beatkeeper"),
            cluster_module=_path(
                env, "BEATKEEPER_CLUSTER_MODULE", _repo_root() / "tests" / "cluster"
            ),
            coredns_module=_path(
                env, "BEATKEEPER_COREDNS_MODULE", _repo_root() / "tests" / "coredns"
            ),
            external_kubeconfig=Path(kubeconfig).expanduser() if kubeconfig else None,
            redis_server=env.get("BEATKEEPER_REDIS_SERVER", "redis-server"),
            crds_dir=_path(env, "BEATKEEPER_CRDS_DIR", _repo_root() / "crds"),
            kubeconform_module=_path(
                env, "BEATKEEPER_KUBECONFORM_MODULE", _repo_root() / "tests" / "kubeconform"
            ),
            health_module=_path(env, "BEATKEEPER_HEALTH_MODULE", _repo_root() / "tests" / "health"),
        )


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


WebhookMode = Literal["local", "service", "off"]
TlsVerify = Literal["required", "optional", "none"]


@dataclass(frozen=True)
class RedisTls:
    """TLS to Redis for `rediss://` URLs: BEATKEEPER_BROKER_TLS_* (operator, beat, workers)."""

    verify: TlsVerify = "required"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisTls:
        verify = env.get("BEATKEEPER_BROKER_TLS_VERIFY", "required").strip() or "required"
        if verify not in ("required", "optional", "none"):
            raise ValueError(
                f"BEATKEEPER_BROKER_TLS_VERIFY={verify!r}: use required, optional or none"
            )
        return cls(
            verify=verify,  # type: ignore[arg-type]
            ca_file=_optional_path(env, "BEATKEEPER_BROKER_TLS_CA_FILE"),
            cert_file=_optional_path(env, "BEATKEEPER_BROKER_TLS_CERT_FILE"),
            key_file=_optional_path(env, "BEATKEEPER_BROKER_TLS_KEY_FILE"),
        )

    def redis_options(self, url: str) -> dict[str, str]:
        """redis-py keyword arguments for `url` (none unless it is rediss://)."""
        if not url.startswith("rediss://"):
            return {}
        options: dict[str, str] = {"ssl_cert_reqs": self.verify}
        for name, path in (
            ("ssl_ca_certs", self.ca_file),
            ("ssl_certfile", self.cert_file),
            ("ssl_keyfile", self.key_file),
        ):
            if path is not None:
                options[name] = str(path)
        return options


@dataclass(frozen=True)
class Tenancy:
    """Redis tenancy (beatkeeper_core.tenancy): one Redis user per namespace.

    `broker_url` is the address the workers reach Redis at (the operator's own
    URL when empty), without credentials: the operator puts each namespace's
    user and password into it. A rotated password stays valid for
    `rotation_grace_seconds`, while the workers restart with the new one.
    """

    enabled: bool = False
    broker_url: str = ""
    rotation_grace_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Tenancy:
        return cls(
            enabled=_flag(env, "BEATKEEPER_TENANCY"),
            broker_url=env.get("BEATKEEPER_TENANCY_BROKER_URL", "").strip(),
            rotation_grace_seconds=_positive(
                env, "BEATKEEPER_TENANCY_ROTATION_GRACE_SECONDS", cls.rotation_grace_seconds
            ),
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "off", "no"):
        return False
    if raw in ("1", "true", "on", "yes"):
        return True
    raise ValueError(f"{name}={raw!r}: use true or false")


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator connects and serves; see the chart's values for the in-cluster values."""

    redis_url: str
    namespaces: tuple[str, ...]  # empty: every namespace; names or kopf's globs (`team-*`)
    resync_seconds: float
    webhook: WebhookMode
    webhook_listen: str  # address the webhook server binds
    webhook_port: int  # 0: a free port (local mode)
    webhook_cert_dir: Path | None  # service mode: tls.crt and tls.key from a Secret
    health_port: int  # 0: no liveness endpoint
    health_listen: str  # address it binds: 127.0.0.1 on a host, 0.0.0.0 in a pod
    metrics_port: int  # 0: no metrics endpoint
    redbeat_prefix: str
    metrics_listen: str = "127.0.0.1"  # 0.0.0.0 in a pod
    # An object whose own reconcile keeps failing is retried after this, doubling.
    object_backoff_seconds: float = 2.0
    tls: RedisTls = field(default_factory=RedisTls)
    tenancy: Tenancy = field(default_factory=Tenancy)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorSettings:
        mode = env.get("BEATKEEPER_WEBHOOK", "local").strip() or "local"
        if mode not in ("local", "service", "off"):
            raise ValueError(f"BEATKEEPER_WEBHOOK={mode!r}: use local, service or off")
        cert_dir = env.get("BEATKEEPER_WEBHOOK_CERT_DIR", "").strip()
        return cls(
            redis_url=env.get("BEATKEEPER_REDIS_URL", "redis://127.0.0.1:6379/0"),
            namespaces=_csv(env, "BEATKEEPER_NAMESPACES"),
            resync_seconds=_number(env, "BEATKEEPER_RESYNC_SECONDS", 10.0),
            webhook=mode,  # type: ignore[arg-type]
            webhook_listen=env.get("BEATKEEPER_WEBHOOK_LISTEN", "127.0.0.1"),
            webhook_port=int(_number(env, "BEATKEEPER_WEBHOOK_PORT", 0)),
            webhook_cert_dir=Path(cert_dir) if cert_dir else None,
            health_port=int(_number(env, "BEATKEEPER_HEALTH_PORT", 0)),
            health_listen=env.get("BEATKEEPER_HEALTH_LISTEN", "127.0.0.1"),
            metrics_port=_port(env, "BEATKEEPER_METRICS_PORT"),
            metrics_listen=_listen(env),
            redbeat_prefix=env.get("BEATKEEPER_REDBEAT_PREFIX", "redbeat:"),
            object_backoff_seconds=_positive(env, "BEATKEEPER_OBJECT_BACKOFF_SECONDS", 2.0),
            tls=RedisTls.from_env(env),
            tenancy=Tenancy.from_env(env),
        )


WorkerPoolKind = Literal["prefork", "threads"]


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default)
    if value <= 0:
        raise ValueError(f"{name}={value:g} must be positive")
    return value


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
    lease_seconds: float = 15.0
    renew_seconds: float = 5.0
    sweep_seconds: float = 1.0
    # A published run no worker has claimed after this long is republished: its
    # message may have been lost on the way to a worker (see runs.py, _UNCLAIMED).
    unclaimed_seconds: float = 60.0
    retention_seconds: float = 7 * 86400.0
    records_maxlen: int = 100_000
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
            broker_url=(
                env.get("BEATKEEPER_BROKER_URL", "").strip()
                or env.get("BEATKEEPER_REDIS_URL", "").strip()
                or cls.broker_url
            ),
            tls_verify=tls.verify,
            tls_ca_file=tls.ca_file,
            tls_cert_file=tls.cert_file,
            tls_key_file=tls.key_file,
            queue=env.get("BEATKEEPER_WORKER_QUEUE", "").strip(),
            tenant=env.get("BEATKEEPER_TENANT", "").strip(),
            pool=pool,  # type: ignore[arg-type]
            concurrency=int(_positive(env, "BEATKEEPER_WORKER_CONCURRENCY", 2)),
            prefetch=int(_positive(env, "BEATKEEPER_WORKER_PREFETCH", 1)),
            task_modules=_csv(env, "BEATKEEPER_TASK_MODULES"),
            allowed_tasks=_csv(env, "BEATKEEPER_ALLOWED_TASKS"),
            allowed_hosts=_csv(env, "BEATKEEPER_ALLOWED_HOSTS"),
            visibility_timeout_seconds=_positive(
                env, "BEATKEEPER_BROKER_VISIBILITY_TIMEOUT", cls.visibility_timeout_seconds
            ),
            restore_interval_seconds=_positive(
                env, "BEATKEEPER_BROKER_RESTORE_INTERVAL", cls.restore_interval_seconds
            ),
            lease_seconds=_positive(env, "BEATKEEPER_LEASE_SECONDS", cls.lease_seconds),
            renew_seconds=_positive(env, "BEATKEEPER_LEASE_RENEW_SECONDS", cls.renew_seconds),
            sweep_seconds=_positive(env, "BEATKEEPER_SWEEP_SECONDS", cls.sweep_seconds),
            unclaimed_seconds=_positive(env, "BEATKEEPER_UNCLAIMED_SECONDS", cls.unclaimed_seconds),
            retention_seconds=_positive(
                env, "BEATKEEPER_RUN_RETENTION_SECONDS", cls.retention_seconds
            ),
            records_maxlen=int(_positive(env, "BEATKEEPER_RECORDS_MAXLEN", cls.records_maxlen)),
            liveness_file=_path(env, "BEATKEEPER_LIVENESS_FILE", cls.liveness_file),
            liveness_seconds=_positive(env, "BEATKEEPER_LIVENESS_SECONDS", cls.liveness_seconds),
            log_level=env.get("BEATKEEPER_WORKER_LOGLEVEL", "").strip().upper() or "INFO",
            metrics_port=_port(env, "BEATKEEPER_METRICS_PORT"),
            metrics_listen=_listen(env),
            metrics_dir=_path(env, "BEATKEEPER_METRICS_DIR", cls.metrics_dir),
        )


def _listen(env: Mapping[str, str]) -> str:
    """BEATKEEPER_METRICS_LISTEN: the address /metrics binds (127.0.0.1 on a host)."""
    return env.get("BEATKEEPER_METRICS_LISTEN", "").strip() or "127.0.0.1"


def _port(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "").strip() or "0"
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a port number (0: off)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{name}={port} must be a port number between 0 (off) and 65535")
    return port


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class BeatSettings:
    """The beat process: which redbeat keys it fires from, and how fast it fails over.

    Its Redis connection (and TLS) is the worker's broker settings: beat
    publishes to the same broker the workers consume.
    """

    redbeat_prefix: str = "redbeat:"
    lock_seconds: float = 10.0  # a standby takes over this long after the active beat died
    poll_seconds: float = 0.2  # longest sleep: bounds lateness of newly written entries
    batch: int = 1000  # due entries loaded per round trip
    metrics_port: int = 0  # 0: no /metrics endpoint
    metrics_listen: str = "127.0.0.1"  # 0.0.0.0 in a pod
    # Redis tenancy: each run goes into its namespace's key space.
    tenancy: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BeatSettings:
        return cls(
            redbeat_prefix=env.get("BEATKEEPER_REDBEAT_PREFIX", "redbeat:"),
            lock_seconds=_number(env, "BEATKEEPER_BEAT_LOCK_SECONDS", cls.lock_seconds),
            poll_seconds=_number(env, "BEATKEEPER_BEAT_POLL_SECONDS", cls.poll_seconds),
            batch=int(_number(env, "BEATKEEPER_BEAT_BATCH", cls.batch)),
            metrics_port=_port(env, "BEATKEEPER_BEAT_METRICS_PORT"),
            metrics_listen=_listen(env),
            tenancy=_flag(env, "BEATKEEPER_TENANCY"),
        )


@dataclass(frozen=True)
class Settings:
    dev: DevSettings
    operator: OperatorSettings
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    beat: BeatSettings = field(default_factory=BeatSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            dev=DevSettings.from_env(env),
            operator=OperatorSettings.from_env(env),
            worker=WorkerSettings.from_env(env),
            beat=BeatSettings.from_env(env),
        )
