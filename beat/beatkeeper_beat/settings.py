"""Beat's settings (`BEATKEEPER_*` of the chart's beat Deployment), read once at start-up by
`BeatSettings.from_env`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from beatkeeper_core import keys
from beatkeeper_core.runs import (
    DEFAULT_RECORDS_MAXLEN,
    DEFAULT_RETENTION_SECONDS,
)
from beatkeeper_core.settings import RedisTls, flag, listen, number, port, positive

_DEFAULT_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class BeatSettings:
    """The beat process: its Redis, which redbeat keys it fires from, how fast it fails over.

    Beat publishes to the broker the workers consume and writes each run's registry
    entry there: `BEATKEEPER_BROKER_URL`, or `BEATKEEPER_REDIS_URL` (what the chart gives
    the operator and beat), with `BEATKEEPER_BROKER_TLS_*` for a rediss:// URL.
    """

    redis_url: str = _DEFAULT_URL
    tls: RedisTls = field(default_factory=RedisTls)
    redbeat_prefix: str = keys.REDBEAT_KEY_PREFIX
    lock_seconds: float = 10.0  # a standby takes over this long after the active beat died
    poll_seconds: float = 0.2  # longest sleep: bounds lateness of newly written entries
    batch: int = 1000  # due entries loaded per round trip
    metrics_port: int = 0  # 0: no /metrics endpoint
    metrics_listen: str = "127.0.0.1"  # 0.0.0.0 in a pod
    # Redis tenancy: each run goes into its namespace's key space.
    tenancy: bool = False
    # The registry entries beat writes for each run (the worker's settings of the same name).
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    records_maxlen: int = DEFAULT_RECORDS_MAXLEN
    redis_timeout_seconds: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BeatSettings:
        return cls(
            redis_url=(
                env.get("BEATKEEPER_BROKER_URL", "").strip()
                or env.get("BEATKEEPER_REDIS_URL", "").strip()
                or _DEFAULT_URL
            ),
            tls=RedisTls.from_env(env),
            redbeat_prefix=env.get("BEATKEEPER_REDBEAT_PREFIX", keys.REDBEAT_KEY_PREFIX),
            lock_seconds=number(env, "BEATKEEPER_BEAT_LOCK_SECONDS", cls.lock_seconds),
            poll_seconds=number(env, "BEATKEEPER_BEAT_POLL_SECONDS", cls.poll_seconds),
            batch=int(number(env, "BEATKEEPER_BEAT_BATCH", cls.batch)),
            metrics_port=port(env, "BEATKEEPER_BEAT_METRICS_PORT"),
            metrics_listen=listen(env),
            tenancy=flag(env, "BEATKEEPER_TENANCY"),
            retention_seconds=positive(
                env, "BEATKEEPER_RUN_RETENTION_SECONDS", cls.retention_seconds
            ),
            records_maxlen=int(positive(env, "BEATKEEPER_RECORDS_MAXLEN", cls.records_maxlen)),
        )
