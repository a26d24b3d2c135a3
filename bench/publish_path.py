"""Publishing N runs due in the same second: Celery's `app.send_task` per run vs the batch adapter.

One real Redis; the same N runs (default 10,000), all due at the same whole second
T, with the same per-run work (registry entry, Pending record on the run-record
stream, broker message), published two ways in the same run:

- library: at T, `publish_run` per run (registry.mark_pending, then `app.send_task`);
- adapter: before T, `prepare_runs` (the messages built with Celery's
  `app.amqp.as_task_v2`); at T, `push_runs` (a few script calls on the registry).

Both use an app from `beatkeeper_core.broker.celery_app` and a `RunRegistry` in the
root key space, and publish from this process's main thread. A poller in another
process drains the queue (RPOP with a count, every 2 ms) and stamps each message's
arrival; lateness = arrival - T. Each measurement has a fresh queue and fresh run
ids, and the database is flushed between measurements (not timed); a warm-up of
each way before the first round opens the connections and loads the scripts.
`--rounds` rounds of both, the order alternated each round; the table has the
medians over the rounds of each way's p50, p99 and last-message lateness, the
ratio library/adapter, and DESIGN.md's bar (fire lateness p99 < 1 s).

    .venv/bin/python -m bench.publish_path [--runs 10000] [--rounds 3] [--lead 2]

Prints a table, then one JSON line:
{"bench": "publish_path", "runs": N, "rounds": R, "library_p99_s": ..., "adapter_p99_s": ...,
 "p99_ratio_library_vs_adapter": ..., ...}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import statistics
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

from beatkeeper_core.broker import celery_app
from beatkeeper_core.contract import RunEnvelope, RunPolicy, TaskCall
from beatkeeper_core.publish import prepare_runs, publish_run, push_runs
from beatkeeper_core.runs import RunRegistry
from beatkeeper_core.settings import RedisTls
from beatkeeper_devenv.processes import Supervisor
from beatkeeper_devenv.redis import start_redis

WAYS = ("library", "adapter")
TARGET_P99_S = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def next_whole_second(lead: float) -> dt.datetime:
    target = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)
    return target.replace(microsecond=0) + dt.timedelta(seconds=1)


def poll(url: str, queue: str, expected: int, timeout: float, conn: Connection) -> None:
    """In a process of its own: arrival times (UNIX) of `expected` messages on `queue`."""
    client = redis.Redis.from_url(url)
    client.ping()
    conn.send("ready")
    arrivals: list[float] = []
    deadline = time.monotonic() + timeout
    while len(arrivals) < expected and time.monotonic() < deadline:
        batch = client.rpop(queue, 1000)
        now = time.time()
        if batch:
            arrivals += [now] * len(batch)
        else:
            time.sleep(0.002)
    conn.send(arrivals)
    conn.close()


def envelopes(count: int, slot: dt.datetime, label: str) -> list[RunEnvelope]:
    policy = RunPolicy(soft_seconds=30, hard_seconds=60)
    return [
        RunEnvelope.for_slot(
            "bench",
            f"{label}-e{i}",
            slot,
            TaskCall(name="bench_tasks.noop", kwargs={"index": i}),
            policy,
        )
        for i in range(count)
    ]


def sleep_until(instant: float) -> None:
    while (left := instant - time.time()) > 0:
        time.sleep(min(left, 0.5))


def measure(
    way: str, url: str, app: Any, registry: RunRegistry, count: int, lead: float
) -> dict[str, float]:
    """Publish `count` runs due at the next whole second T one way; their lateness."""
    label = uuid.uuid4().hex[:8]
    queue = f"beatkeeper.bench.{way}-{label}"
    # The poller first: a spawned interpreter takes a while to import.
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    poller = context.Process(target=poll, args=(url, queue, count, 300.0, theirs))
    poller.start()
    if not ours.poll(60) or ours.recv() != "ready":
        raise RuntimeError("the poller did not start")
    while True:
        due = next_whole_second(lead)
        runs = envelopes(count, due, label)
        started = time.monotonic()
        prepared = prepare_runs(app, [(e, queue) for e in runs], due) if way == "adapter" else []
        prepare_s = time.monotonic() - started
        if time.time() < due.timestamp() - 0.3:
            break
        lead *= 2  # preparing took until T: start over with a later T

    sleep_until(due.timestamp())
    fired = time.time()
    if way == "adapter":
        fresh = push_runs(registry, prepared)
    else:
        fresh = [publish_run(app, e, queue, registry=registry, now=due) for e in runs]
    publish_s = time.time() - fired
    arrivals: list[float] = ours.recv()
    poller.join(10)
    if sum(fresh) != count:
        raise RuntimeError(f"{way}: {count - sum(fresh)} runs were not new")
    if len(arrivals) != count:
        raise RuntimeError(f"{way}: {len(arrivals)} of {count} messages arrived")
    lateness = [arrival - due.timestamp() for arrival in arrivals]
    registry.client.flushdb()
    return {
        "start_s": round(fired - due.timestamp(), 4),
        "prepare_s": round(prepare_s, 3),
        "publish_s": round(publish_s, 3),
        "p50_s": statistics.median(lateness),
        "p99_s": percentile(lateness, 0.99),
        "last_s": max(lateness),
    }


def warm_up(url: str, app: Any, registry: RunRegistry) -> None:
    """Connections open and scripts loaded before the first measured round."""
    for way in WAYS:
        runs = envelopes(20, dt.datetime.now(dt.UTC), f"warm-{way}")
        queue = f"beatkeeper.bench.warm-{way}"
        if way == "adapter":
            push_runs(registry, prepare_runs(app, [(e, queue) for e in runs], runs[0].slot))
        else:
            for envelope in runs:
                publish_run(app, envelope, queue, registry=registry)
    registry.client.flushdb()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="of both ways, order alternated")
    parser.add_argument("--lead", type=float, default=2.0, help="seconds from setup to T")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    supervisor = Supervisor(work / "logs")
    samples: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    try:
        _component, url = start_redis(supervisor, work / "redis")
        client = redis.Redis.from_url(url)
        app = celery_app(url, RedisTls(), main="bench-publish")
        registry = RunRegistry(client)
        warm_up(url, app, registry)
        for round_ in range(args.rounds):
            order = WAYS if round_ % 2 == 0 else WAYS[::-1]
            for way in order:
                sample = measure(way, url, app, registry, args.runs, args.lead)
                samples[way].append(sample)
                prepared = (
                    f", prepared before T in {sample['prepare_s']:.3f} s"
                    if way == "adapter"
                    else ""
                )
                print(
                    f"round {round_ + 1} {way:<8} p50 {sample['p50_s']:.3f} s  "
                    f"p99 {sample['p99_s']:.3f} s  last {sample['last_s']:.3f} s  "
                    f"(publishing call {sample['publish_s']:.3f} s{prepared})",
                    flush=True,
                )
        app.close()
        client.close()
    finally:
        supervisor.stop_all()

    def median(way: str, field: str) -> float:
        return round(statistics.median(s[field] for s in samples[way]), 3)

    rows = {
        way: {field: median(way, field) for field in ("p50_s", "p99_s", "last_s")} for way in WAYS
    }
    prepare_s = median("adapter", "prepare_s")
    ratios = {
        field: round(rows["library"][field] / rows["adapter"][field], 1)
        if rows["adapter"][field] > 0
        else None
        for field in ("p50_s", "p99_s", "last_s")
    }
    meets = {way: rows[way]["p99_s"] < TARGET_P99_S for way in WAYS}
    print()
    print(f"{args.runs} runs due at the same second; medians of {args.rounds} rounds")
    print(
        f"{'way':<36}{'p50 s':>9}{'p99 s':>9}{'last s':>9}{'prep s':>9}  p99 < {TARGET_P99_S:g} s"
    )
    labels = {
        "library": "library: publish_run (send_task)",
        "adapter": "adapter: prepare_runs + push_runs",
    }
    for way in WAYS:
        row = rows[way]
        print(
            f"{labels[way]:<36}{row['p50_s']:>9.3f}{row['p99_s']:>9.3f}{row['last_s']:>9.3f}"
            f"{(f'{prepare_s:.3f}' if way == 'adapter' else '-'):>9}  "
            f"{'yes' if meets[way] else 'NO'}"
        )
    print(
        f"{'ratio library/adapter':<36}{ratios['p50_s']!s:>9}{ratios['p99_s']!s:>9}"
        f"{ratios['last_s']!s:>9}"
    )
    result: dict[str, Any] = {
        "bench": "publish_path",
        "runs": args.runs,
        "rounds": args.rounds,
        **{f"{way}_{field}": value for way in WAYS for field, value in rows[way].items()},
        **{
            f"{field.removesuffix('_s')}_ratio_library_vs_adapter": r for field, r in ratios.items()
        },
        "adapter_prepare_s": prepare_s,
        "library_meets_p99_1s": meets["library"],
        "adapter_meets_p99_1s": meets["adapter"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
