"""Fire lateness of 10,000 entries due in the same second: Beatkeeper's beat vs stock redbeat.

Both run as real `celery beat` processes against one real Redis, one after the
other in the same run, with the same number of entries all due at the same
whole second T. One poller drains both queues (RPOP with a count, every 2 ms)
and stamps each message's arrival; lateness = arrival - T. Beatkeeper's figure
includes its per-run work (the Pending record and the run registry entry).

    .venv/bin/python -m bench.fire_lateness [--entries 10000] [--lead 8]

Prints a table, then one JSON line:
{"bench": "fire_lateness", "entries": N, "p50_s": ..., "p99_s": ..., "anchor_p50_s": ..., ...}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from beatkeeper_core import contract
from beatkeeper_core.redbeat import RedbeatStore
from beatkeeper_devenv.processes import Component, Supervisor, wait_until
from beatkeeper_devenv.redis import start_redis

REPO = Path(__file__).resolve().parents[1]
OURS_QUEUE = "beatkeeper.bench.ours"
STOCK_QUEUE = "bench.stock"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def next_whole_second(lead: float) -> dt.datetime:
    target = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)
    return target.replace(microsecond=0) + dt.timedelta(seconds=1)


def drain(client: redis.Redis, queue: str, expected: int, timeout: float) -> list[float]:
    """Arrival times (UNIX) of `expected` messages on `queue`."""
    arrivals: list[float] = []
    deadline = time.monotonic() + timeout
    while len(arrivals) < expected and time.monotonic() < deadline:
        batch = client.rpop(queue, 1000)
        now = time.time()
        if batch:
            arrivals += [now] * len(batch)  # type: ignore[arg-type]
        else:
            time.sleep(0.002)
    return arrivals


def ours_entries(count: int, due: dt.datetime) -> list[contract.EntryDefinition]:
    return [
        contract.EntryDefinition(
            name=f"bench/e{i}",
            namespace="bench",
            object_name=f"e{i}",
            queue=OURS_QUEUE,
            schedule=contract.ScheduleSpec(kind="at", at=due),
            task=contract.TaskCall(name="beatkeeper.sleep"),
        )
        for i in range(count)
    ]


def run_ours(
    supervisor: Supervisor, url: str, client: redis.Redis, count: int, lead: float
) -> list[float]:
    env = {**os.environ, "BEATKEEPER_BROKER_URL": url, "BEATKEEPER_REDBEAT_PREFIX": "bench-ours:"}
    beat = supervisor.start("beat-ours", [sys.executable, "-m", "beatkeeper.cli", "beat"], env=env)
    wait_until(beat, lambda: "Acquired lock" in beat.log_path.read_text(), timeout=60)
    due = next_whole_second(lead)
    store = RedbeatStore(client, "bench-ours:")
    entries = ours_entries(count, due)
    for start in range(0, count, 1000):
        store.upsert_if_changed(entries[start : start + 1000], dt.datetime.now(dt.UTC))
    arrivals = drain(client, OURS_QUEUE, count, timeout=lead + 120)
    supervisor.stop(beat)
    return [arrival - due.timestamp() for arrival in arrivals]


def save_stock_entries(url: str, count: int, due: dt.datetime) -> None:
    os.environ["BENCH_BROKER_URL"] = url
    os.environ["BENCH_REDBEAT_PREFIX"] = "bench-stock:"
    from celery.schedules import schedule
    from redbeat import RedBeatSchedulerEntry

    from bench.stock_app import app

    interval = schedule(run_every=dt.timedelta(hours=1), app=app)
    last_run = due - dt.timedelta(hours=1)
    for i in range(count):
        entry = RedBeatSchedulerEntry(
            f"e{i}", "bench.noop", interval, args=[i], options={"queue": STOCK_QUEUE}, app=app
        )
        entry.last_run_at = last_run
        entry.save()


def start_stock_beat(supervisor: Supervisor, url: str) -> Component:
    env = {
        **os.environ,
        "BENCH_BROKER_URL": url,
        "BENCH_REDBEAT_PREFIX": "bench-stock:",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    schedule_file = Path(tempfile.mkdtemp()) / "schedule"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.stock_app",
        "beat",
        "-S",
        "redbeat.RedBeatScheduler",
        "--schedule",
        str(schedule_file),
        "--loglevel",
        "INFO",
    ]
    beat = supervisor.start("beat-stock", argv, env=env, cwd=REPO)
    wait_until(beat, lambda: "Acquired lock" in beat.log_path.read_text(), timeout=60)
    return beat


def run_stock(
    supervisor: Supervisor, url: str, client: redis.Redis, count: int, lead: float
) -> list[float]:
    # Entries are saved first (saving 10,000 takes a while), due `lead` s after that.
    due = next_whole_second(lead + count / 2000)
    save_stock_entries(url, count, due)
    beat = start_stock_beat(supervisor, url)
    arrivals = drain(client, STOCK_QUEUE, count, timeout=(due.timestamp() - time.time()) + 300)
    supervisor.stop(beat)
    return [arrival - due.timestamp() for arrival in arrivals]


def summary(lateness: list[float]) -> dict[str, float]:
    return {
        "fired": len(lateness),
        "p50_s": round(statistics.median(lateness), 3) if lateness else float("nan"),
        "p99_s": round(percentile(lateness, 0.99), 3) if lateness else float("nan"),
        "max_s": round(max(lateness), 3) if lateness else float("nan"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--lead", type=float, default=8.0, help="seconds between setup and T")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-fire-"))
    supervisor = Supervisor(work / "logs")
    try:
        _component, url = start_redis(supervisor, work / "redis")
        client = redis.Redis.from_url(url)
        ours = summary(run_ours(supervisor, url, client, args.entries, args.lead))
        stock = summary(run_stock(supervisor, url, client, args.entries, args.lead))
    finally:
        supervisor.stop_all()
    print(f"{'beat':<28}{'fired':>8}{'p50 s':>10}{'p99 s':>10}{'max s':>10}")
    for label, row in (("beatkeeper beat", ours), ("stock redbeat (anchor)", stock)):
        print(f"{label:<28}{row['fired']:>8}{row['p50_s']:>10}{row['p99_s']:>10}{row['max_s']:>10}")
    result = {
        "bench": "fire_lateness",
        "entries": args.entries,
        **ours,
        **{f"anchor_{key}": value for key, value in stock.items()},
        "p99_ratio_vs_anchor": round(ours["p99_s"] / stock["p99_s"], 3) if stock["p99_s"] else None,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
