"""The operator's settings (`BEATKEEPER_*` of the operator's Deployment; the chart's values
name each), read once at start-up by `OperatorSettings.from_env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from beatkeeper_core import keys
from beatkeeper_core.settings import RedisTls, csv, flag, listen, number, port, positive

WebhookMode = Literal["local", "service", "off"]


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
            enabled=flag(env, "BEATKEEPER_TENANCY"),
            broker_url=env.get("BEATKEEPER_TENANCY_BROKER_URL", "").strip(),
            rotation_grace_seconds=positive(
                env, "BEATKEEPER_TENANCY_ROTATION_GRACE_SECONDS", cls.rotation_grace_seconds
            ),
        )


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator connects and serves; see the chart's values for the in-cluster values."""

    redis_url: str
    namespaces: tuple[str, ...]  # empty: every namespace; names or kopf's globs (`team-*`)
    resync_seconds: float
    # service (the default, in a cluster: the chart's Service and certificate Secret),
    # local (the local environment: a server on this host with its own CA) or off.
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
        mode = env.get("BEATKEEPER_WEBHOOK", "service").strip() or "service"
        if mode not in ("local", "service", "off"):
            raise ValueError(f"BEATKEEPER_WEBHOOK={mode!r}: use local, service or off")
        cert_dir = env.get("BEATKEEPER_WEBHOOK_CERT_DIR", "").strip()
        return cls(
            redis_url=env.get("BEATKEEPER_REDIS_URL", "redis://127.0.0.1:6379/0"),
            namespaces=csv(env, "BEATKEEPER_NAMESPACES"),
            resync_seconds=number(env, "BEATKEEPER_RESYNC_SECONDS", 10.0),
            webhook=mode,  # type: ignore[arg-type]
            webhook_listen=env.get("BEATKEEPER_WEBHOOK_LISTEN", "127.0.0.1"),
            webhook_port=int(number(env, "BEATKEEPER_WEBHOOK_PORT", 0)),
            webhook_cert_dir=Path(cert_dir) if cert_dir else None,
            health_port=int(number(env, "BEATKEEPER_HEALTH_PORT", 0)),
            health_listen=env.get("BEATKEEPER_HEALTH_LISTEN", "127.0.0.1"),
            metrics_port=port(env, "BEATKEEPER_METRICS_PORT"),
            metrics_listen=listen(env),
            redbeat_prefix=env.get("BEATKEEPER_REDBEAT_PREFIX", keys.REDBEAT_KEY_PREFIX),
            object_backoff_seconds=positive(env, "BEATKEEPER_OBJECT_BACKOFF_SECONDS", 2.0),
            tls=RedisTls.from_env(env),
            tenancy=Tenancy.from_env(env),
        )
