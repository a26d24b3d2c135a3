"""A throwaway Redis (Debian's redis-server) on a free loopback port."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import redis

from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.processes import Component, Supervisor, wait_until


class RedisMissing(RuntimeError):
    pass


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(
    supervisor: Supervisor,
    workdir: Path,
    executable: str = "redis-server",
    *,
    pod_network: str | None = None,
    port: int | None = None,
    append_only: bool = False,
    name: str = "redis",
) -> tuple[Component, str]:
    """Start redis-server; return the component and its URL.

    With `pod_network` (the node's gateway address) Redis also listens there, so
    pods reach it, and asks for a password; the URL then names that address,
    which the host reaches too. `port` and `workdir` given again restart the same
    server; with `append_only` its data (AOF, fsynced every second) survives that.
    """
    if shutil.which(executable) is None:
        raise RedisMissing(f"{executable} not found; install it with: apt-get install redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"redis://127.0.0.1:{port}/0"
    exposed: list[str] = []
    if pod_network is not None:
        password = secrets.token_hex(16)
        url = f"redis://:{password}@{pod_network}:{port}/0"
        # The password goes in through a file, so it never shows in the process list.
        config = workdir / "redis.conf"
        config.write_text(f"requirepass {password}\n")
        config.chmod(0o600)
        exposed = [str(config)]
    component = supervisor.start(
        name,
        [
            executable,
            *exposed,
            "--bind",
            "127.0.0.1",
            *([pod_network] if pod_network else []),
            "--port",
            str(port),
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if append_only else "no",
            # Evicting keys would make schedules vanish silently.
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
    )
    wait_until(component, lambda: _pings(url), timeout=30)
    return component, url
