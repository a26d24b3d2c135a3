"""Typed settings: the only module that reads environment variables.

Every process Beatkeeper starts (operator, beat, worker, the local dev launcher)
builds one `Settings` from its environment at start-up and passes the parts it
needs down; nothing else looks at `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _repo_root() -> Path:
    # operator/beatkeeper/settings.py -> the checkout root (editable installs only).
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
    external_kubeconfig: Path | None
    redis_server: str

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
            external_kubeconfig=Path(kubeconfig).expanduser() if kubeconfig else None,
            redis_server=env.get("BEATKEEPER_REDIS_SERVER", "redis-server"),
        )


@dataclass(frozen=True)
class Settings:
    dev: DevSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(dev=DevSettings.from_env(env))
