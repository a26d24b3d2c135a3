"""Reading settings from the environment: the parsers every program's settings use, and
Redis TLS (`RedisTls`), the one builder of TLS options for every Redis client.

Each program has its own settings object, which reads only its own variables:
`beatkeeper.operator.settings.OperatorSettings`, `beatkeeper_beat.settings.BeatSettings`,
`beatkeeper_worker.settings.WorkerSettings` and, for the local environment,
`beatkeeper_devenv.settings.DevSettings`. Each is built once at start-up, from
`os.environ`, and passed down; nothing else looks at the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TlsVerify = Literal["required", "optional", "none"]


def path(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = env.get(name, "").strip()
    return Path(value).expanduser() if value else default


def optional_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value).expanduser() if value else None


def csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


def number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = number(env, name, default)
    if value <= 0:
        raise ValueError(f"{name}={value:g} must be positive")
    return value


def flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "off", "no"):
        return False
    if raw in ("1", "true", "on", "yes"):
        return True
    raise ValueError(f"{name}={raw!r}: use true or false")


def port(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "").strip() or "0"
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a port number (0: off)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{name}={port} must be a port number between 0 (off) and 65535")
    return port


def listen(env: Mapping[str, str]) -> str:
    """BEATKEEPER_METRICS_LISTEN: the address /metrics binds (127.0.0.1 on a host)."""
    return env.get("BEATKEEPER_METRICS_LISTEN", "").strip() or "127.0.0.1"


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
            ca_file=optional_path(env, "BEATKEEPER_BROKER_TLS_CA_FILE"),
            cert_file=optional_path(env, "BEATKEEPER_BROKER_TLS_CERT_FILE"),
            key_file=optional_path(env, "BEATKEEPER_BROKER_TLS_KEY_FILE"),
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
