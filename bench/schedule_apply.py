"""Apply -> armed in Redis -> Ready=True, for 1,000 ScheduledTasks applied at once.

A real local control plane, Redis and the operator process (with its admission
webhook). Objects are created by 8 client threads as fast as the apiserver takes
them; each object's latency runs from the moment its create call returned to
(a) its redbeat entry having a score and (b) `Ready=True` in its status. Then,
optionally, the operator's resident memory with 10,000 objects. The anchor: the
same creates before the operator runs (no webhook, no watch), which is how
long the apiserver itself takes on this machine.

    .venv/bin/python -m bench.schedule_apply [--objects 1000] [--memory-objects 10000]

Prints a table, then one JSON line:
{"bench": "schedule_apply", "objects": N, "armed_p50_ms": ..., "ready_p99_ms": ..., "total_s": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import redis

from beatkeeper_core import keys
from beatkeeper_devenv.environment import Environment, local_environment
from beatkeeper_devenv.kube import install_crds, kubectl
from beatkeeper_devenv.settings import DevSettings
from beatkeeper_devenv.system import start_operator

NAMESPACE = "bench"
GROUP, VERSION, PLURAL = "beatkeeper.dev", "v1alpha1", "scheduledtasks"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def task(name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ScheduledTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"every": "1h", "workerPool": "p", "task": {"name": "beatkeeper.sleep"}},
    }


def create_all(
    api: Any, names: list[str], rate: float = 0.0, namespace: str = NAMESPACE
) -> dict[str, float]:
    """Create every object, 8 at a time, or paced at `rate` per second when given."""
    created: dict[str, float] = {}
    lock = threading.Lock()
    start = time.monotonic()

    def create(index_name: tuple[int, str]) -> None:
        index, name = index_name
        if rate:
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, task(name, namespace)
        )
        with lock:
            created[name] = time.time()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, enumerate(names)))
    return created


def _is_ready(item: dict[str, Any]) -> bool:
    conditions = (item.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class ReadyWatch(threading.Thread):
    """Records when each object is first seen Ready=True, from one watch stream."""

    def __init__(self, api: Any) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.ready: dict[str, float] = {}
        self.watch = kubernetes.watch.Watch()

    def run(self) -> None:
        self.running = True
        while self.running:
            try:
                self._follow()
            except Exception:  # the stream broke (apiserver busy): watch again
                time.sleep(0.1)

    def _follow(self) -> None:
        stream = self.watch.stream(
            self.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            timeout_seconds=1800,
        )
        for event in stream:
            item = event["object"]
            name = item["metadata"]["name"]
            if name not in self.ready and _is_ready(item):
                self.ready[name] = time.time()

    def stop(self) -> None:
        self.running = False
        self.watch.stop()


class ArmedWatch(threading.Thread):
    """Records when each entry got its score in Redis (polled every 20 ms).

    One ZMSCORE per poll for every entry still waiting: the measurement must
    not take the CPU the system under test needs (a pipeline of one ZSCORE
    per entry took a third of a core at 1,000 entries).
    """

    def __init__(self, client: redis.Redis, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.names = names
        self.armed: dict[str, float] = {}
        self.deadline = time.monotonic() + 1800

    def run(self) -> None:
        schedule_key = keys.redbeat_schedule_key()
        waiting = {keys.redbeat_key(NAMESPACE, name): name for name in self.names}
        while waiting and time.monotonic() < self.deadline:
            names = list(waiting)
            scores = self.client.zmscore(schedule_key, names)
            now = time.time()
            for key, score in zip(names, scores, strict=True):
                if score is not None:
                    self.armed[waiting.pop(key)] = now
            time.sleep(0.02)


def track(
    api: Any,
    client: redis.Redis,
    names: list[str],
    ready: ReadyWatch,
    timeout: float,
    rate: float = 0.0,
) -> tuple[dict[str, float], dict[str, float]]:
    """Create the objects while watching them get armed and Ready."""
    armed = ArmedWatch(client, names)
    armed.start()
    created = create_all(api, names, rate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (
        len(armed.armed) == len(names) and all(name in ready.ready for name in names)
    ):
        time.sleep(0.05)
    armed.deadline = 0
    armed.join()
    return created, armed.armed


def latencies(done: dict[str, float], created: dict[str, float]) -> list[float]:
    return [max(0.0, done[name] - created[name]) * 1000 for name in done if name in created]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(env: Environment) -> dict[str, float]:
    return {c.name: cpu_seconds(c.pid) for c in env.supervisor.components if c.running()}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(env: Environment) -> Any:
    install_crds(env.kubeconfig, DevSettings.from_env(os.environ).crds_dir)
    kubectl(env.kubeconfig, "create", "namespace", NAMESPACE)
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkerPool",
        "metadata": {"name": "p", "namespace": NAMESPACE},
        "spec": {"image": "worker:1", "replicas": 0},
    }
    kubectl(env.kubeconfig, "apply", "-f", "-", stdin=json.dumps(pool))
    client = kubernetes.config.new_client_from_config(str(env.kubeconfig))
    client.configuration.connection_pool_maxsize = 16
    return kubernetes.client.CustomObjectsApi(client)


def anchor_create_seconds(env: Environment, api: Any, count: int, rate: float) -> float:
    """The same creates with no operator (no webhook, no watch): the apiserver's own floor.

    Run before the operator starts, in a namespace deleted again before it does.
    """
    namespace = "bench-anchor"
    kubectl(env.kubeconfig, "create", "namespace", namespace)
    started = time.time()
    created = create_all(api, [f"a{i:05d}" for i in range(count)], rate, namespace)
    seconds = max(created.values()) - started
    kubectl(env.kubeconfig, "delete", "namespace", namespace, "--timeout=300s")
    return seconds


def measure_memory(
    api: Any, client: redis.Redis, operator_pid: int, start: int, total: int, ready: ReadyWatch
) -> float:
    names = [f"m{i:05d}" for i in range(start, total)]
    track(api, client, names, ready, timeout=1800)
    time.sleep(15)  # a resync period or more with everything in place
    return rss_mib(operator_pid)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--memory-objects", type=int, default=10_000, help="0 to skip")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="objects/s; 0: as fast as it takes them"
    )
    args = parser.parse_args(argv)
    settings = DevSettings.from_env(os.environ)
    with local_environment(settings, redis=True) as env:
        api = prepare(env)
        anchor_s = anchor_create_seconds(env, api, args.objects, args.rate)
        operator = start_operator(env)
        assert env.redis_url is not None
        client = redis.Redis.from_url(env.redis_url)
        idle_rss = rss_mib(operator.pid)
        names = [f"t{i:05d}" for i in range(args.objects)]
        watcher = ReadyWatch(api)
        watcher.start()
        cpu_before = process_cpu(env)
        client_before = cpu_seconds(os.getpid())
        started = time.time()
        created, armed = track(api, client, names, watcher, timeout=300, rate=args.rate)
        cpu = {
            name: round(used - cpu_before.get(name, 0.0), 1)
            for name, used in process_cpu(env).items()
        }
        cpu["bench client"] = round(cpu_seconds(os.getpid()) - client_before, 1)
        ready = {name: watcher.ready[name] for name in names if name in watcher.ready}
        total = max([*ready.values(), started]) - started
        armed_ms, ready_ms = latencies(armed, created), latencies(ready, created)
        memory = (
            measure_memory(api, client, operator.pid, args.objects, args.memory_objects, watcher)
            if args.memory_objects
            else None
        )
        watcher.stop()
        client.close()
    result = {
        "bench": "schedule_apply",
        "objects": args.objects,
        "rate_per_s": args.rate or "burst",
        "armed": len(armed),
        "ready": len(ready),
        "create_s": round(max(created.values()) - started, 2),
        "anchor_create_s_no_operator": round(anchor_s, 2),
        "armed_p50_ms": round(statistics.median(armed_ms), 1),
        "armed_p99_ms": round(percentile(armed_ms, 0.99), 1),
        "ready_p50_ms": round(statistics.median(ready_ms), 1),
        "ready_p99_ms": round(percentile(ready_ms, 0.99), 1),
        "total_s": round(total, 2),
        "target_total_s": 10,
        "target_p50_ms": 100,
        "cpu_s_by_process": cpu,
        "operator_rss_idle_mib": round(idle_rss, 1),
        "operator_rss_mib": round(memory, 1) if memory else None,
        "memory_objects": args.memory_objects or None,
        "target_rss_mib": 250,
    }
    print(f"{'measure':<36}{'value':>12}")
    for key, value in result.items():
        if key != "bench":
            print(f"{key:<36}{value!s:>12}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
