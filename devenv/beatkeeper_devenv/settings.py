"""Where the local development environment keeps its caches and state (`BEATKEEPER_*_DIR`,
`BEATKEEPER_*_MODULE`, `BEATKEEPER_KUBECONFIG`, `BEATKEEPER_REDIS_SERVER`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from beatkeeper_core.settings import path

_REPO = Path(__file__).resolve().parents[2]  # devenv/beatkeeper_devenv/ -> the checkout


def _repo_root() -> Path:
    return _REPO


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
        xdg_cache = path(env, "XDG_CACHE_HOME", home / ".cache")
        xdg_state = path(env, "XDG_STATE_HOME", home / ".local" / "state")
        kubeconfig = env.get("BEATKEEPER_KUBECONFIG", "").strip()
        return cls(
            cache_dir=path(env, "BEATKEEPER_CACHE_DIR", xdg_cache / "beatkeeper"),
            state_dir=path(env, "BEATKEEPER_STATE_DIR", xdg_state / "beatkeeper"),
            cluster_module=path(
                env, "BEATKEEPER_CLUSTER_MODULE", _repo_root() / "tests" / "cluster"
            ),
            coredns_module=path(
                env, "BEATKEEPER_COREDNS_MODULE", _repo_root() / "tests" / "coredns"
            ),
            external_kubeconfig=Path(kubeconfig).expanduser() if kubeconfig else None,
            redis_server=env.get("BEATKEEPER_REDIS_SERVER", "redis-server"),
            crds_dir=path(env, "BEATKEEPER_CRDS_DIR", _repo_root() / "crds"),
            kubeconform_module=path(
                env, "BEATKEEPER_KUBECONFORM_MODULE", _repo_root() / "tests" / "kubeconform"
            ),
            health_module=path(env, "BEATKEEPER_HEALTH_MODULE", _repo_root() / "tests" / "health"),
        )
