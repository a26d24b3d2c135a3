"""Faults against the whole system; count every slot lost, run twice or recorded wrongly.

The system under test, on this machine: a local control plane, the operator,
two beats, a pool of three workers (prefork, production lease and broker
timings; one of them reaches Redis through a proxy that can be cut) and Redis
with append-only persistence. 20 ScheduledTasks fire every 1 or 2 s (catch-up
window 120 s, so slots that fall into an outage run late instead of being
recorded Missed). For `--minutes` a seeded random schedule injects, every 8 to
16 s, one of:

- `worker-kill`: SIGKILL of a worker (it comes back 3 s later, as a kubelet
  restarts a container);
- `beat-kill`: SIGKILL of the beat holding the lock (back 5 s later, standby);
- `operator-kill`: SIGKILL of the operator (back 3 s later);
- `redis-restart`: Redis stopped and started again on its port and data;
- `worker-partition`: the proxied worker cut off from Redis for 4 to 8 s
  (shorter than the fence: longer cuts stop its runs, see worker_image/README.md).

The user code (bench/chaos_tasks.py) counts each run's completions in another
Redis, outside the system. After the faults, everything is healed and given
`--drain` seconds; then for every slot of the fault period:

- lost: never completed and not recorded Missed or Skipped;
- doubled: completed more than once;
- wrong: the last record disagrees with what happened (Succeeded without a
  completion, a completion without Succeeded, Succeeded twice);

plus fire lateness (Pending record - slot) p50/p99, beat failover (a beat kill
to the next publish) and worker death to rerun (a worker kill to its in-flight
runs' next start elsewhere). Slots are judged from each task's first published
slot (its entry is armed a moment after the object is created; a slot before
that was never due to beat) when that came before the first fault. Prints a
table, then one JSON line.

    .venv/bin/python -m bench.chaos [--minutes 3] [--seed 7] [--drain 60]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from beatkeeper_core import contract, keys
from beatkeeper_devenv.environment import Environment, local_environment
from beatkeeper_devenv.kube import install_crds, kubectl
from beatkeeper_devenv.netproxy import Partition
from beatkeeper_devenv.processes import Component, wait_until
from beatkeeper_devenv.redis import start_redis
from beatkeeper_devenv.settings import DevSettings

NAMESPACE = "chaos"
HERE = Path(__file__).resolve().parent
KINDS = ("worker-kill", "beat-kill", "operator-kill", "redis-restart", "worker-partition")
WORKERS = 3
PROXIED = "w0"  # the worker behind the proxy
CUTOFF_SECONDS = 5  # slots this close to the end of the fault period are not judged


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Fault:
    kind: str
    at: float  # wall clock
    target: str = ""
    held: list[str] = field(default_factory=list)  # runs in flight on a killed worker


@dataclass
class Chaos:
    env: Environment
    settings: DevSettings
    workdir: Path
    counter_url: str
    redis_port: int = 0
    redis_url: str = ""
    redis: Component | None = None
    proxy: Partition | None = None
    operator: Component | None = None
    beats: dict[str, Component] = field(default_factory=dict)
    workers: dict[str, Component] = field(default_factory=dict)
    generation: Counter[str] = field(default_factory=Counter)
    pending: list[tuple[float, Any]] = field(default_factory=list)

    # The system

    def start_redis(self) -> None:
        self.redis, self.redis_url = start_redis(
            self.env.supervisor,
            self.workdir / "redis",
            self.settings.redis_server,
            port=self.redis_port or None,
            append_only=True,
            name=f"redis-{self.generation['redis']}",
        )
        self.generation["redis"] += 1
        self.redis_port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])

    def service_env(self, **extra: str) -> dict[str, str]:
        env = self.env.kube_env()
        env.pop("BEATKEEPER_KUBECONFIG", None)
        env.update(
            BEATKEEPER_REDIS_URL=self.redis_url,
            BEATKEEPER_BROKER_URL=self.redis_url,
            CHAOS_COUNTER_URL=self.counter_url,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        )
        env.update(extra)
        return env

    def start_operator(self) -> None:
        env = self.service_env(BEATKEEPER_RESYNC_SECONDS="2", BEATKEEPER_WEBHOOK="off")
        name = f"operator-{self.generation['operator']}"
        self.generation["operator"] += 1
        self.operator = self.env.supervisor.start(
            name, [sys.executable, "-m", "beatkeeper.cli", "operator"], env=env
        )

    def start_beat(self, slot: str) -> None:
        name = f"{slot}-{self.generation[slot]}"
        self.generation[slot] += 1
        self.beats[slot] = self.env.supervisor.start(
            name,
            [sys.executable, "-m", "beatkeeper.cli", "beat"],
            env=self.service_env(BEATKEEPER_BEAT_POLL_SECONDS="0.2"),
        )

    def start_worker(self, slot: str) -> None:
        name = f"{slot}-g{self.generation[slot]}"
        self.generation[slot] += 1
        broker = self.redis_url
        if slot == PROXIED:
            assert self.proxy is not None
            broker = f"redis://127.0.0.1:{self.proxy.port}/0"
        alive = self.workdir / f"{name}.alive"
        env = self.service_env(
            BEATKEEPER_BROKER_URL=broker,
            BEATKEEPER_WORKER_QUEUE=contract.queue_name(NAMESPACE, "p"),
            BEATKEEPER_TASK_MODULES="chaos_tasks",
            BEATKEEPER_ALLOWED_TASKS="chaos.*",
            BEATKEEPER_WORKER_CONCURRENCY="2",
            BEATKEEPER_LIVENESS_FILE=str(alive),
        )
        self.workers[slot] = self.env.supervisor.start(
            name,
            [sys.executable, "-m", "beatkeeper_worker", f"--hostname={name}@chaos"],
            env=env,
        )

    def kill(self, component: Component) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(component.pid, signal.SIGKILL)
        component.popen.wait()
        if component in self.env.supervisor.components:
            self.env.supervisor.components.remove(component)

    def later(self, seconds: float, action: Any) -> None:
        """Run `action` in `seconds`, from the main thread (see `wait`)."""
        self.pending.append((time.monotonic() + seconds, action))

    def wait(self, seconds: float) -> None:
        """Sleep, running due delayed actions. Processes must be started from the
        main thread: their parent-death signal fires when the forking thread ends."""
        until = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            for item in sorted(self.pending, key=lambda pair: pair[0]):
                if item[0] <= now:
                    self.pending.remove(item)
                    item[1]()
            if now >= until:
                return
            time.sleep(min(0.1, until - now))

    # The faults

    def inject(self, kind: str, rng: random.Random) -> Fault:
        now = time.time()
        if kind == "worker-kill":
            slot = rng.choice(sorted(self.workers))
            worker = self.workers.pop(slot)
            fault = Fault(kind, now, worker.name)
            self.kill(worker)
            self.later(3, lambda: self.start_worker(slot))
            return fault
        if kind == "beat-kill":
            slot = self.active_beat()
            beat = self.beats.pop(slot)
            self.kill(beat)
            self.later(5, lambda: self.start_beat(slot))
            return Fault(kind, now, beat.name)
        if kind == "operator-kill":
            assert self.operator is not None
            self.kill(self.operator)
            self.later(3, self.start_operator)
            return Fault(kind, now, "operator")
        if kind == "redis-restart":
            assert self.redis is not None
            self.env.supervisor.stop(self.redis, grace=30)  # SIGTERM: Redis writes its AOF
            self.start_redis()
            return Fault(kind, now, "redis")
        assert self.proxy is not None
        seconds = rng.uniform(4, 8)
        self.proxy.cut()
        self.later(seconds, self.proxy.heal)
        return Fault(kind, now, f"{PROXIED} for {seconds:.1f} s")

    def active_beat(self) -> str:
        """The beat whose log last says it holds the lock."""
        for slot, beat in self.beats.items():
            lines = [
                line
                for line in beat.log_path.read_text(errors="replace").splitlines()
                if "Acquired lock" in line or "lost its lock" in line
            ]
            if lines and "Acquired lock" in lines[-1]:
                return slot
        return next(iter(self.beats))


def task(index: int) -> dict[str, Any]:
    every = "1s" if index % 2 == 0 else "2s"
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": f"t{index:02d}", "namespace": NAMESPACE},
        "spec": {
            "every": every,
            "workerPool": "p",
            "task": {"name": "chaos.tick", "kwargs": {"seconds": 0.2}},
            "retry": {"maxRetries": 0},
            "catchUp": {"windowSeconds": 120, "maxRuns": 100},
        },
    }


def setup(chaos: Chaos) -> None:
    kube = chaos.env.kubeconfig
    install_crds(kube, chaos.settings.crds_dir)
    chaos.proxy = Partition(("127.0.0.1", chaos.redis_port))
    chaos.start_operator()
    assert chaos.operator is not None
    wait_until(
        chaos.operator,
        lambda: "operator configured" in chaos.operator.log_path.read_text(),  # type: ignore[union-attr]
        timeout=90,
    )
    for slot in ("beat-a", "beat-b"):
        chaos.start_beat(slot)
    for index in range(WORKERS):
        chaos.start_worker(f"w{index}")
    kubectl(kube, "create", "namespace", NAMESPACE)
    pool = {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "p", "namespace": NAMESPACE},
        "spec": {"image": "unused:1", "replicas": 0, "allowedTasks": ["chaos.*"]},
    }
    items = [pool, *(task(i) for i in range(20))]
    kubectl(kube, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
            "items": items}))  # fmt: skip


def stream_records(url: str) -> list[contract.RunRecord]:
    client = redis.Redis.from_url(url)
    try:
        return contract.stream_records(client.xrange(keys.RUN_RECORDS_STREAM))  # type: ignore[arg-type]
    finally:
        client.close()


def expected_slots(
    kubeconfig: Path,
    records: list[contract.RunRecord],
    faults_from: dt.datetime,
    until: dt.datetime,
) -> dict[str, list[dt.datetime]]:
    """Every slot of every task from its first one up to `until`.

    A task's first slot is the first one beat published (its entry is armed a
    moment after the object is created, and beat fires from then on), provided
    that came before the first fault; otherwise the first after its creation,
    so a loss at the start still counts.
    """
    found = json.loads(kubectl(kubeconfig, "get", "st", "-n", NAMESPACE, "-o", "json").stdout)[
        "items"
    ]
    first_published: dict[str, dt.datetime] = {}
    for record in records:
        _, name, slot = contract.parse_run_id(record.run_id)
        if "~" not in record.run_id and (
            name not in first_published or slot < first_published[name]
        ):
            first_published[name] = slot
    slots: dict[str, list[dt.datetime]] = {}
    for item in found:
        name = item["metadata"]["name"]
        created = dt.datetime.fromisoformat(
            item["metadata"]["creationTimestamp"].replace("Z", "+00:00")
        )
        every = 1 if item["spec"]["every"] == "1s" else 2
        first = created.replace(microsecond=0) + dt.timedelta(seconds=every)
        if name in first_published and first_published[name] < faults_from:
            first = first_published[name]
        count = int((until - first).total_seconds() // every) + 1
        slots[name] = [first + dt.timedelta(seconds=every * k) for k in range(max(count, 0))]
    return slots


def judge(
    slots: dict[str, list[dt.datetime]],
    records: list[contract.RunRecord],
    completed: dict[str, int],
) -> dict[str, Any]:
    by_run: dict[str, list[contract.RunRecord]] = defaultdict(list)
    for record in records:
        by_run[record.run_id].append(record)
    lost, doubled, wrong, missed, lateness = [], [], [], [], []
    total = 0
    for name, times in slots.items():
        for slot in times:
            total += 1
            run = contract.run_id(NAMESPACE, name, slot)
            history = by_run.get(run, [])
            final = [r.state for r in history if r.state.finished]
            done = completed.get(run, 0)
            pending = [r for r in history if r.state is contract.RunState.PENDING]
            if pending:
                lateness.append((pending[0].time - slot).total_seconds())
            if done > 1:
                doubled.append(run)
            if done == 0 and not set(final) & {contract.RunState.MISSED, contract.RunState.SKIPPED}:
                lost.append(run)
            if contract.RunState.MISSED in final:
                missed.append(run)
            succeeded = final.count(contract.RunState.SUCCEEDED)
            # Recorded Succeeded exactly when it completed, and only once.
            if succeeded > 1 or (succeeded == 1) != (done >= 1):
                wrong.append(run)
    details = {
        run: " ".join(f"{r.state.value}#{r.attempt}" for r in by_run.get(run, [])) or "no record"
        for run in [*lost, *doubled, *wrong][:10]
    }
    return {
        "details": details,
        "slots": total,
        "lost": lost,
        "doubled": doubled,
        "wrong": wrong,
        "missed": missed,
        "lateness": lateness,
    }


def failovers(faults: list[Fault], records: list[contract.RunRecord]) -> list[float]:
    published = sorted(r.time.timestamp() for r in records if r.state is contract.RunState.PENDING)
    gaps = []
    for fault in faults:
        if fault.kind == "beat-kill":
            after = next((t for t in published if t > fault.at), None)
            if after is not None:
                gaps.append(after - fault.at)
    return gaps


def reruns(faults: list[Fault], records: list[contract.RunRecord]) -> list[float]:
    """For each worker kill: its runs in flight, and how long until they started elsewhere."""
    by_run: dict[str, list[contract.RunRecord]] = defaultdict(list)
    for record in records:
        by_run[record.run_id].append(record)
    delays = []
    for fault in faults:
        if fault.kind != "worker-kill":
            continue
        for history in by_run.values():
            before = [r for r in history if r.time.timestamp() <= fault.at]
            if not before or before[-1].state is not contract.RunState.RUNNING:
                continue
            if not before[-1].worker.startswith(fault.target):
                continue
            again = next(
                (
                    r
                    for r in history
                    if r.time.timestamp() > fault.at and r.state is contract.RunState.RUNNING
                ),
                None,
            )
            if again is not None:
                delays.append(again.time.timestamp() - fault.at)
    return delays


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = DevSettings.from_env(os.environ)
    rng = random.Random(args.seed)
    with local_environment(settings, redis=False) as env:
        workdir = env.log_dir / "chaos"
        workdir.mkdir(parents=True, exist_ok=True)
        _counter, counter_url = start_redis(
            env.supervisor, workdir / "counter", settings.redis_server, name="counter-redis"
        )
        chaos = Chaos(env, settings, workdir, counter_url)
        chaos.start_redis()
        setup(chaos)
        time.sleep(10)  # every task has fired before the first fault
        faults: list[Fault] = []
        started = time.time()
        deadline = started + args.minutes * 60
        while True:
            gap = rng.uniform(8, 16)
            if time.time() + gap > deadline:
                break
            chaos.wait(gap)
            kind = rng.choice(KINDS)
            faults.append(chaos.inject(kind, rng))
            print(f"{time.time() - started:7.1f} s  {kind} {faults[-1].target}", flush=True)
        fault_end = dt.datetime.fromtimestamp(time.time(), dt.UTC)
        chaos.wait(10)  # the last delayed restarts and heals
        print(f"faults over; draining {args.drain} s", flush=True)
        chaos.wait(args.drain)
        records = stream_records(chaos.redis_url)
        counter = redis.Redis.from_url(counter_url)
        completed = {k.decode(): int(v) for k, v in counter.hgetall("chaos:completed").items()}
        counter.close()
        cutoff = fault_end - dt.timedelta(seconds=CUTOFF_SECONDS)
        faults_from = dt.datetime.fromtimestamp(started, dt.UTC)
        slots = expected_slots(env.kubeconfig, records, faults_from, cutoff)
        verdict = judge(slots, records, completed)
        if chaos.proxy is not None:
            chaos.proxy.close()
    return {
        "verdict": verdict,
        "faults": faults,
        "failover": failovers(faults, records),
        "rerun": reruns(faults, records),
        "minutes": args.minutes,
        "seed": args.seed,
    }


def report(result: dict[str, Any]) -> dict[str, Any]:
    verdict, faults = result["verdict"], result["faults"]
    kinds = Counter(f.kind for f in faults)
    lateness, failover, rerun = verdict["lateness"], result["failover"], result["rerun"]
    print(f"\nfaults injected: {len(faults)} over {result['minutes']} min (seed {result['seed']})")
    for kind in KINDS:
        print(f"  {kind:<18}{kinds.get(kind, 0):>4}")
    print(f"\nslots judged          {verdict['slots']:>8}")
    for name in ("lost", "doubled", "wrong", "missed"):
        print(f"{name:<22}{len(verdict[name]):>8}   {' '.join(verdict[name][:5])}")
    for run, states in verdict["details"].items():
        print(f"  {run}: {states}")
    p50, p99 = percentile(lateness, 0.5), percentile(lateness, 0.99)
    print(f"fire lateness p50/p99 {p50:>8.2f} / {p99:.2f} s")
    for label, values in (("beat failover", failover), ("worker death -> rerun", rerun)):
        if values:
            middle, worst = statistics.median(values), max(values)
            print(f"{label:<22}{middle:>8.2f} s median, max {worst:.2f} s")
    summary = {
        "bench": "chaos",
        "minutes": result["minutes"],
        "seed": result["seed"],
        "faults": len(faults),
        "faults_by_kind": {kind: kinds.get(kind, 0) for kind in KINDS},
        "slots": verdict["slots"],
        "lost": len(verdict["lost"]),
        "doubled": len(verdict["doubled"]),
        "wrong": len(verdict["wrong"]),
        "missed": len(verdict["missed"]),
        "lateness_p50_s": round(percentile(lateness, 0.5), 3),
        "lateness_p99_s": round(percentile(lateness, 0.99), 3),
        "beat_failover_median_s": round(statistics.median(failover), 2) if failover else None,
        "beat_failover_max_s": round(max(failover), 2) if failover else None,
        "worker_rerun_median_s": round(statistics.median(rerun), 2) if rerun else None,
        "worker_rerun_max_s": round(max(rerun), 2) if rerun else None,
        "target": {"lost": 0, "doubled": 0, "wrong": 0},
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0, help="how long faults are injected")
    parser.add_argument("--seed", type=int, default=7, help="the fault schedule's seed")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to settle afterwards")
    summary = report(run(parser.parse_args(argv)))
    return 0 if summary["lost"] == summary["doubled"] == summary["wrong"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
