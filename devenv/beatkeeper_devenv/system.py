"""The operator and beat as host processes on top of the local environment.

`start_system` runs them as real processes (the same console script their
pods run) under the environment's supervisor, pointed at its cluster and
Redis, and waits until the operator serves its admission webhook and beat
holds its lock: `beatkeeper dev up`'s fast inner loop, where a code change
needs a restart, not an image. WorkerPool pods run on the environment's node.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.environment import Environment
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.processes import Component, wait_until

WEBHOOK_CONFIG = "beatkeeper.dev"


@dataclass(frozen=True)
class System:
    operator: Component
    beat: Component
    operator_metrics: str  # the /metrics URLs
    beat_metrics: str


def system_env(env: Environment, **extra: str) -> dict[str, str]:
    assert env.redis_url is not None, "the system needs Redis"
    child = env.kube_env()
    child.pop("BEATKEEPER_KUBECONFIG", None)
    child.update(
        BEATKEEPER_REDIS_URL=env.redis_url,
        BEATKEEPER_BROKER_URL=env.redis_url,
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return child


def _webhook_registered(env: Environment) -> Callable[[], bool]:
    def check() -> bool:
        result = kubectl(
            env.kubeconfig,
            "get",
            "validatingwebhookconfiguration",
            WEBHOOK_CONFIG,
            "-o",
            "json",
            check=False,
        )
        return result.returncode == 0 and bool(json.loads(result.stdout).get("webhooks"))

    return check


def start_operator(env: Environment, **extra: str) -> Component:
    component = env.supervisor.start(
        "operator",
        [sys.executable, "-m", "beatkeeper.cli", "operator"],
        env=system_env(env, BEATKEEPER_WEBHOOK="local", **extra),
    )
    wait_until(component, _webhook_registered(env), timeout=90, interval=0.5)
    return component


def start_beat(env: Environment, name: str = "beat", **extra: str) -> Component:
    component = env.supervisor.start(
        name, [sys.executable, "-m", "beatkeeper.cli", "beat"], env=system_env(env, **extra)
    )
    wait_until(component, lambda: "Acquired lock" in component.log_path.read_text(), timeout=60)
    return component


def start_system(env: Environment, progress: Callable[[str], None] = lambda _m: None) -> System:
    started = time.monotonic()
    progress("starting the operator (kopf, admission webhook on 127.0.0.1)")
    operator_port, beat_port = free_port(), free_port()
    operator = start_operator(env, BEATKEEPER_METRICS_PORT=str(operator_port))
    progress(f"operator ready in {time.monotonic() - started:.1f} s; starting beat")
    beat = start_beat(env, BEATKEEPER_BEAT_METRICS_PORT=str(beat_port))
    progress(f"beat holds the schedule lock after {time.monotonic() - started:.1f} s")
    return System(
        operator=operator,
        beat=beat,
        operator_metrics=f"http://127.0.0.1:{operator_port}/metrics",
        beat_metrics=f"http://127.0.0.1:{beat_port}/metrics",
    )
