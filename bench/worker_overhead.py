"""Throughput of no-op runs through `beatkeeper.run` envelopes versus bare Celery tasks.

One real worker process per configuration (the same settings for both kinds)
drains N pre-published messages of one kind at a time; rounds alternate
envelope and bare, and the median of the rounds is reported. While messages
are published the worker's consumer is cancelled (remote control), so the
clock measures draining only: from `add_consumer` until the queue is empty and
nothing is left unacked.

Two configurations by default, headline first:
- prefetch 4 (Celery's default multiplier, what a pool of short tasks uses):
  the envelope's per-run Redis work (two round trips: claim + Running record,
  outcome + record) runs in the pool process while the consumer, the
  bottleneck of a no-op workload, handles other messages;
- prefetch 1 (the WorkerPool default, right for long tasks): with acks_late
  each pool process waits for its next message after acking, so those two
  round trips add to every cycle instead of overlapping.

    .venv/bin/python -m bench.worker_overhead [--tasks 5000] [--rounds 3] [--prefetch 4 1]

With `--metrics`, it measures what Prometheus metrics cost instead: two workers of the
same settings drain envelope runs in alternating rounds, one without metrics and one
serving /metrics (multiprocess mode under prefork) that a scraper reads every second;
the ratio on/off is the cost (target: >= 0.95, at most 5 % of the throughput):

    .venv/bin/python -m bench.worker_overhead --metrics --tasks 1000 --rounds 5

With `--tenancy`, it measures what Redis tenancy costs: two workers of the same settings
drain envelope runs in alternating rounds, one as before (the administrative credential,
the root key space) and one logged in as a namespace's Redis user, with that namespace's
key space and ACL (`BEATKEEPER_TENANT`), provisioned by the operator's `TenantCredentials`
(its Secret write lands in a stand-in: no apiserver here). Runs are published as beat
publishes them, into each worker's key space; the ratio tenancy/no tenancy is the cost:

    .venv/bin/python -m bench.worker_overhead --tenancy --tasks 1000 --rounds 3

Prints a table, then one JSON line (headline = the first prefetch):
{"bench": "worker_overhead", "envelope_tasks_per_s": ..., "bare_tasks_per_s": ..., "ratio": ...,
 "configs": [...]}
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import shared_task

from beatkeeper.operator.credentials import TenantCredentials, secret_name
from beatkeeper.operator.deployments import PoolRef
from beatkeeper.operator.settings import Tenancy
from beatkeeper_core import keys, tenancy
from beatkeeper_core.broker import Registries
from beatkeeper_core.contract import RunEnvelope, RunPolicy, TaskCall, queue_name
from beatkeeper_core.publish import publish_run, publish_runs
from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.processes import Supervisor, wait_until
from beatkeeper_devenv.redis import start_redis
from beatkeeper_worker.app import create_app
from beatkeeper_worker.runtime import runtime_for
from beatkeeper_worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
NOOP = "bench.noop"
TENANT = "bench-tenant"  # the namespace whose Redis user the tenancy worker logs in as


@shared_task(name=NOOP, ignore_result=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    """The task both kinds run: the work is nil, so the overhead is all there is."""


def start_worker(
    supervisor: Supervisor,
    url: str,
    queue: str,
    args: argparse.Namespace,
    prefetch: int,
    **extra: str,
) -> Any:
    liveness = supervisor.log_dir / f"worker-{queue}.alive"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "BEATKEEPER_BROKER_URL": url,
        "BEATKEEPER_WORKER_QUEUE": queue,
        "BEATKEEPER_TASK_MODULES": "bench.worker_overhead",
        "BEATKEEPER_WORKER_POOL": args.pool,
        "BEATKEEPER_WORKER_CONCURRENCY": str(args.concurrency),
        "BEATKEEPER_WORKER_PREFETCH": str(prefetch),
        "BEATKEEPER_WORKER_LOGLEVEL": "WARNING",
        "BEATKEEPER_LIVENESS_FILE": str(liveness),
        **extra,
    }
    name = f"bench-{uuid.uuid4().hex[:6]}@%h"
    worker = supervisor.start(
        f"worker-{queue}",
        [sys.executable, "-m", "beatkeeper_worker", f"--hostname={name}"],
        env=env,
    )
    wait_until(worker, liveness.exists, timeout=60)
    return worker


def publish(app: Any, queue: str, kind: str, count: int) -> None:
    if kind == "bare":
        for _ in range(count):
            app.send_task(NOOP, queue=queue)
        return
    slot = dt.datetime.now(dt.UTC)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    for i in range(count):
        envelope = RunEnvelope.for_slot(
            "bench", f"{name}-{i}", slot, TaskCall(name=NOOP), RunPolicy()
        )
        publish_run(app, envelope, queue, registry=runtime_for(app).registry())


def drained(client: redis.Redis, queue: str, prefix: str = "") -> bool:
    """Nothing waiting or unacked; `prefix`: the key space's (kombu prefixes its keys)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(f"{prefix}{queue}")
        pipe.hlen(f"{prefix}unacked")
        waiting, unacked = pipe.execute()
    return bool(waiting == 0 and unacked == 0)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the worker and its pool)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    ticks = 0
    for each in [pid, *map(int, children)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True)
class Sample:
    tasks_per_s: float
    cpu_ms_per_task: float  # worker processes and redis-server: robust to other load


def measure(
    app: Any, client: redis.Redis, queue: str, worker_pid: int, kind: str, count: int
) -> Sample:
    """Drain `count` pre-published messages of `kind`."""
    app.control.cancel_consumer(queue, reply=True, limit=1, timeout=10)
    publish(app, queue, kind, count)
    cpu = tree_cpu(worker_pid) + redis_cpu(client)
    started = time.perf_counter()
    app.control.add_consumer(queue, reply=True, limit=1, timeout=10)
    while not drained(client, queue):
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    used = tree_cpu(worker_pid) + redis_cpu(client) - cpu
    return Sample(count / elapsed, used * 1000 / count)


class SecretStandIn:
    """Where `TenantCredentials` writes a pool's credential Secret (no apiserver here)."""

    def __init__(self) -> None:
        self.bodies: dict[tuple[str, str], dict[str, Any]] = {}

    def write_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.bodies[(namespace, body["metadata"]["name"])] = body

    def url(self, pool: PoolRef) -> str:
        body = self.bodies[(pool.namespace, secret_name(pool.name))]
        return base64.b64decode(body["data"][tenancy.URL_KEY]).decode()


@dataclass(frozen=True)
class Target:
    """One worker of the tenancy comparison: its queue, the app that reaches its consumer
    (remote control goes through the worker's key space), and its namespace under
    tenancy ("": none, the root key space)."""

    queue: str
    control: Any
    pid: int
    tenant: str = ""


def measure_runs(app: Any, client: redis.Redis, target: Target, count: int) -> Sample:
    """Drain `count` envelope runs published as beat publishes them (one batch, into the
    target's key space with the administrative connection), as `measure` does."""
    namespace, prefix = target.tenant or "bench", ""
    registry = runtime_for(app).registry()
    if target.tenant:
        registry = Registries(registry.client, tenancy=True).for_namespace(target.tenant)
        prefix = keys.tenant_prefix(target.tenant)
    target.control.control.cancel_consumer(target.queue, reply=True, limit=1, timeout=10)
    slot = dt.datetime.now(dt.UTC)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    runs = [
        (RunEnvelope.for_slot(namespace, f"{name}-{i}", slot, TaskCall(name=NOOP), RunPolicy()),
         target.queue)
        for i in range(count)
    ]  # fmt: skip
    publish_runs(app, runs, registry=registry)
    cpu = tree_cpu(target.pid) + redis_cpu(client)
    started = time.perf_counter()
    target.control.control.add_consumer(target.queue, reply=True, limit=1, timeout=10)
    deadline = started + 300
    while not drained(client, target.queue, prefix):
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"{target.queue} not drained within 300 s (tenant {target.tenant!r})"
            )
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    used = tree_cpu(target.pid) + redis_cpu(client) - cpu
    return Sample(count / elapsed, used * 1000 / count)


def run_config(
    args: argparse.Namespace, prefetch: int, url: str, workdir: Path
) -> dict[str, list[Sample]]:
    supervisor = Supervisor(workdir / f"logs-prefetch-{prefetch}")
    queue = queue_name("bench", uuid.uuid4().hex[:8])
    app = create_app(WorkerSettings(broker_url=url, queue=queue))
    client = redis.Redis.from_url(url)
    try:
        pid = start_worker(supervisor, url, queue, args, prefetch).pid
        measure(app, client, queue, pid, "bare", min(args.tasks, 500))  # warm up
        rates: dict[str, list[Sample]] = {"envelope": [], "bare": []}
        for round_ in range(args.rounds):
            # Alternate which kind goes first, so drift favours neither.
            order = ("envelope", "bare") if round_ % 2 == 0 else ("bare", "envelope")
            for kind in order:
                rates[kind].append(measure(app, client, queue, pid, kind, args.tasks))
        return rates
    finally:
        client.close()
        app.close()
        supervisor.stop_all()


def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    supervisor = Supervisor(workdir / "logs")
    try:
        url = args.redis_url or start_redis(supervisor, workdir / "redis")[1]
        return [summary(p, run_config(args, p, url, workdir)) for p in args.prefetch]
    finally:
        supervisor.stop_all()


def summary(prefetch: int, samples: dict[str, list[Sample]]) -> dict[str, Any]:
    def median(kind: str, field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples[kind])

    envelope, bare = median("envelope", "tasks_per_s"), median("bare", "tasks_per_s")
    return {
        "prefetch": prefetch,
        "envelope_tasks_per_s": round(envelope, 1),
        "bare_tasks_per_s": round(bare, 1),
        "ratio": round(envelope / bare, 3),
        "envelope_cpu_ms_per_task": round(median("envelope", "cpu_ms_per_task"), 3),
        "bare_cpu_ms_per_task": round(median("bare", "cpu_ms_per_task"), 3),
        "envelope_rounds": [round(s.tasks_per_s, 1) for s in samples["envelope"]],
        "bare_rounds": [round(s.tasks_per_s, 1) for s in samples["bare"]],
    }


def report(configs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"worker_overhead: {args.tasks} no-op tasks x {args.rounds} rounds per kind, "
        f"pool={args.pool} concurrency={args.concurrency}, one worker per prefetch"
    )
    print(
        f"{'prefetch':>8}  {'envelope/s':>10}  {'bare/s':>8}  {'ratio':>6}  "
        f"{'cpu ms/task env | bare':>22}  rounds/s (env | bare)"
    )
    for c in configs:
        rounds = (
            f"{', '.join(f'{r:.0f}' for r in c['envelope_rounds'])} | "
            f"{', '.join(f'{r:.0f}' for r in c['bare_rounds'])}"
        )
        print(
            f"{c['prefetch']:>8}  {c['envelope_tasks_per_s']:>10.0f}  "
            f"{c['bare_tasks_per_s']:>8.0f}  {c['ratio']:>6.3f}  "
            f"{c['envelope_cpu_ms_per_task']:>13.2f} | {c['bare_cpu_ms_per_task']:<6.2f}  {rounds}"
        )
    headline = configs[0]
    print(
        f"ratio envelope/bare at prefetch {headline['prefetch']}: {headline['ratio']:.3f} "
        "(target >= 0.9)"
    )
    print(
        json.dumps(
            {
                "bench": "worker_overhead",
                "tasks": args.tasks,
                "rounds": args.rounds,
                "pool": args.pool,
                "concurrency": args.concurrency,
                "prefetch": headline["prefetch"],
                "envelope_tasks_per_s": headline["envelope_tasks_per_s"],
                "bare_tasks_per_s": headline["bare_tasks_per_s"],
                "ratio": headline["ratio"],
                "configs": configs,
            }
        )
    )


class Scraper:
    """Reads a /metrics endpoint every `interval` seconds, as Prometheus would."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with urllib.request.urlopen(self.url, timeout=5) as answer:
                answer.read()
            self.scrapes += 1


def run_metrics(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Envelope runs drained by a worker without metrics and one with them, alternating."""
    supervisor = Supervisor(workdir / "logs")
    prefetch = args.prefetch[0]
    try:
        url = args.redis_url or start_redis(supervisor, workdir / "redis")[1]
        queues = {
            mode: queue_name("bench", f"{mode}-{uuid.uuid4().hex[:6]}") for mode in ("off", "on")
        }
        port = free_port()
        pids = {
            "off": start_worker(supervisor, url, queues["off"], args, prefetch).pid,
            "on": start_worker(
                supervisor, url, queues["on"], args, prefetch,
                BEATKEEPER_METRICS_PORT=str(port),
                BEATKEEPER_METRICS_DIR=str(workdir / "metrics"),
            ).pid,
        }  # fmt: skip
        app = create_app(WorkerSettings(broker_url=url))
        client = redis.Redis.from_url(url)
        samples: dict[str, list[Sample]] = {"off": [], "on": []}
        with Scraper(port) as scraper:
            for mode in ("off", "on"):  # warm up
                measure(app, client, queues[mode], pids[mode], "envelope", min(args.tasks, 200))
            for round_ in range(args.rounds):
                order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
                for mode in order:
                    samples[mode].append(
                        measure(app, client, queues[mode], pids[mode], "envelope", args.tasks)
                    )
        client.close()
        app.close()
    finally:
        supervisor.stop_all()
    off = statistics.median(s.tasks_per_s for s in samples["off"])
    on = statistics.median(s.tasks_per_s for s in samples["on"])
    return {
        "bench": "worker_overhead_metrics",
        "tasks": args.tasks,
        "rounds": args.rounds,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "prefetch": prefetch,
        "metrics_off_tasks_per_s": round(off, 1),
        "metrics_on_tasks_per_s": round(on, 1),
        "ratio": round(on / off, 3),
        "off_rounds": [round(s.tasks_per_s, 1) for s in samples["off"]],
        "on_rounds": [round(s.tasks_per_s, 1) for s in samples["on"]],
        "scrapes": scraper.scrapes,
    }


def report_metrics(result: dict[str, Any]) -> None:
    print(
        f"worker_overhead --metrics: {result['tasks']} no-op envelope runs x {result['rounds']} "
        f"rounds per mode, pool={result['pool']} concurrency={result['concurrency']} "
        f"prefetch={result['prefetch']}, /metrics scraped every second "
        f"({result['scrapes']} scrapes)"
    )
    print(
        f"metrics off: {result['metrics_off_tasks_per_s']:.0f}/s (rounds "
        f"{', '.join(f'{r:.0f}' for r in result['off_rounds'])})"
    )
    print(
        f"metrics on:  {result['metrics_on_tasks_per_s']:.0f}/s (rounds "
        f"{', '.join(f'{r:.0f}' for r in result['on_rounds'])})"
    )
    print(f"ratio on/off: {result['ratio']:.3f} (target >= 0.95)")
    print(json.dumps(result))


def run_tenancy(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Envelope runs drained by a worker without tenancy and one under it, alternating."""
    supervisor = Supervisor(workdir / "logs")  # Redis
    workers = Supervisor(workdir / "logs-workers")
    prefetch = args.prefetch[0]
    apps: list[Any] = []
    try:
        url = args.redis_url or start_redis(supervisor, workdir / "redis")[1]
        client = redis.Redis.from_url(url)
        secrets = SecretStandIn()
        credentials = TenantCredentials(
            client,
            secrets,  # type: ignore[arg-type]  # only its write_secret is called
            Tenancy(enabled=True),
            url,
        )
        pool = PoolRef(TENANT, f"pool-{uuid.uuid4().hex[:6]}", str(uuid.uuid4()))
        credentials.ensure(pool)
        try:
            tenant_url = secrets.url(pool)
            app = create_app(WorkerSettings(broker_url=url))
            tenant_app = create_app(WorkerSettings(broker_url=tenant_url, tenant=TENANT))
            apps += [app, tenant_app]
            off_queue = queue_name("bench", f"off-{uuid.uuid4().hex[:6]}")
            on_queue = queue_name(TENANT, pool.name)
            off_pid = start_worker(workers, url, off_queue, args, prefetch).pid
            on_pid = start_worker(
                workers, tenant_url, on_queue, args, prefetch, BEATKEEPER_TENANT=TENANT
            ).pid
            targets = {
                "off": Target(off_queue, app, off_pid),
                "on": Target(on_queue, tenant_app, on_pid, tenant=TENANT),
            }
            samples: dict[str, list[Sample]] = {"off": [], "on": []}
            for mode in ("off", "on"):  # warm up
                measure_runs(app, client, targets[mode], min(args.tasks, 200))
            for round_ in range(args.rounds):
                order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
                for mode in order:
                    samples[mode].append(measure_runs(app, client, targets[mode], args.tasks))
            # The tenant's runs left nothing outside its key space.
            foreign = [
                key.decode()
                for key in client.scan_iter(match=f"*{on_queue}*", count=1000)
                if not key.decode().startswith(keys.tenant_prefix(TENANT))
            ]
        finally:
            workers.stop_all()
            credentials.release(pool.namespace, pool.uid)
            client.close()
    finally:
        for each in apps:
            each.close()
        workers.stop_all()
        supervisor.stop_all()
    off = statistics.median(s.tasks_per_s for s in samples["off"])
    on = statistics.median(s.tasks_per_s for s in samples["on"])
    return {
        "bench": "worker_overhead_tenancy",
        "tasks": args.tasks,
        "rounds": args.rounds,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "prefetch": prefetch,
        "tenant": TENANT,
        "tenancy_off_tasks_per_s": round(off, 1),
        "tenancy_on_tasks_per_s": round(on, 1),
        "ratio": round(on / off, 3),
        "off_cpu_ms_per_task": round(
            statistics.median(s.cpu_ms_per_task for s in samples["off"]), 3
        ),
        "on_cpu_ms_per_task": round(statistics.median(s.cpu_ms_per_task for s in samples["on"]), 3),
        "off_rounds": [round(s.tasks_per_s, 1) for s in samples["off"]],
        "on_rounds": [round(s.tasks_per_s, 1) for s in samples["on"]],
        "tenant_keys_outside_its_space": foreign,
    }


def report_tenancy(result: dict[str, Any]) -> None:
    print(
        f"worker_overhead --tenancy: {result['tasks']} no-op envelope runs x {result['rounds']} "
        f"rounds per mode, pool={result['pool']} concurrency={result['concurrency']} "
        f"prefetch={result['prefetch']}; on: Redis user {tenancy.user_name(result['tenant'])}"
    )
    for mode, label in (("off", "tenancy off:"), ("on", "tenancy on: ")):
        print(
            f"{label} {result[f'tenancy_{mode}_tasks_per_s']:.0f}/s, "
            f"{result[f'{mode}_cpu_ms_per_task']:.2f} cpu ms/task (rounds "
            f"{', '.join(f'{r:.0f}' for r in result[f'{mode}_rounds'])})"
        )
    print(f"ratio on/off: {result['ratio']:.3f}")
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", choices=("prefork", "threads"), default="prefork")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--prefetch", type=int, nargs="+", default=[4, 1])
    parser.add_argument("--redis-url", help="an existing Redis (default: start one)")
    parser.add_argument(
        "--metrics", action="store_true", help="measure metrics on vs off instead of bare"
    )
    parser.add_argument(
        "--tenancy",
        action="store_true",
        help="measure a worker under Redis tenancy (a namespace's user) vs one without",
    )
    args = parser.parse_args(argv)
    if args.metrics and args.tenancy:
        parser.error("--metrics and --tenancy are separate measurements: pick one")
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as workdir:
        if args.metrics:
            report_metrics(run_metrics(args, Path(workdir)))
        elif args.tenancy:
            report_tenancy(run_tenancy(args, Path(workdir)))
        else:
            report(run(args, Path(workdir)), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
