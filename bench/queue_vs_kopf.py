"""schedule_apply's measurement for two operators: main.py's work queue vs kopf per object.

(a) "queue": the real operator (`beatkeeper operator`, as bench.schedule_apply starts
it): watch events mark objects dirty, a work queue reconciles them in batches of
100, a resync loop reconciles everything every BEATKEEPER_RESYNC_SECONDS.
(b) "kopf": `python -m bench.kopf_operator`, the same runtime, webhook, settings and
WorkerPool handlers, with kopf's per-object machinery for ScheduledTasks
(on.resume/create/update/delete per object, a kopf.timer per object as the resync).

Each operator gets a fresh local environment (control plane, Redis) of its own, one
after the other, with the same environment variables. In each, as
bench.schedule_apply does it (its functions): the anchor (the same creates with no
operator running), then --objects ScheduledTasks created at once by 8 threads with
latency per object from its create call to armed in Redis and to Ready=True; then
objects up to --memory-objects in all (0: skipped), 15 s more, and the operator's
RSS and its CPU use over those 15 s (the steady state: resync alone). Kopf's
writes of its own are shown from one object (its finalizer, its annotations).
--rounds N runs both N times, the order alternating; figures are medians.

    .venv/bin/python -m bench.queue_vs_kopf [--objects 1000] [--memory-objects 10000] [--rounds 1]

Prints a table (queue, kopf, kopf/queue), then one JSON line:
{"bench": "queue_vs_kopf", "queue": {...}, "kopf": {...}, "ratio_kopf_over_queue": {...},
 "meets_targets": {"queue": {...}, "kopf": {...}}, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.environment import Environment, local_environment
from beatkeeper_devenv.processes import Component, wait_until
from beatkeeper_devenv.settings import DevSettings
from beatkeeper_devenv.system import _webhook_registered, start_operator, system_env
from bench.schedule_apply import (
    GROUP,
    NAMESPACE,
    PLURAL,
    VERSION,
    ReadyWatch,
    anchor_create_seconds,
    cpu_seconds,
    latencies,
    percentile,
    prepare,
    process_cpu,
    rss_mib,
    track,
)

REPO = Path(__file__).resolve().parents[1]
OPERATORS = ("queue", "kopf")
TARGET_TOTAL_S, TARGET_P50_MS, TARGET_RSS_MIB = 10.0, 100.0, 250.0
STEADY_SECONDS = 15  # as schedule_apply.measure_memory: a resync period or more
COMPARED = (
    "total_s",
    "armed_p50_ms",
    "armed_p99_ms",
    "ready_p50_ms",
    "ready_p99_ms",
    "operator_cpu_s_burst",
    "operator_rss_idle_mib",
    "operator_rss_mib",
    "operator_cpu_pct_steady",
    "memory_fill_s",
    "reconciles_per_s_steady",
)


def start(kind: str, env: Environment, **extra: str) -> Component:
    """The operator of `kind`, started as start_operator starts the real one."""
    if kind == "queue":
        return start_operator(env, **extra)
    component = env.supervisor.start(
        "operator-kopf",
        [sys.executable, "-m", "bench.kopf_operator"],
        env=system_env(env, BEATKEEPER_WEBHOOK="local", **extra),
        cwd=REPO,
    )
    wait_until(component, _webhook_registered(env), timeout=90, interval=0.5)
    return component


def sample_meta(api: Any, name: str) -> dict[str, Any]:
    item = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    meta = item["metadata"]
    return {
        "finalizers": meta.get("finalizers") or [],
        "annotations": sorted(meta.get("annotations") or {}),
    }


def log_problems(component: Component) -> list[str]:
    lines = component.log_path.read_text(errors="replace").splitlines()
    found = [line for line in lines if "Traceback" in line or " ERROR" in line or "[ERROR" in line]
    return found[:5] + ([f"... {len(found)} in all"] if len(found) > 5 else [])


def reconciled(metrics_url: str | None) -> float | None:
    """ScheduledTasks reconciled so far (beatkeeper_operator_reconciles_total, ok + error)."""
    if metrics_url is None:
        return None
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("beatkeeper_operator_reconciles_total{")
        and 'kind="ScheduledTask"' in line
    )


def steady(
    api: Any,
    client: redis.Redis,
    operator: Component,
    start_at: int,
    total: int,
    ready: ReadyWatch,
    timeout: float,
    metrics_url: str | None = None,
) -> dict[str, Any]:
    """schedule_apply.measure_memory, with the fill time and the CPU of the last 15 s
    (and, with the metrics, how many objects were reconciled per second in them)."""
    names = [f"m{i:05d}" for i in range(start_at, total)]
    began = time.time()
    _, armed = track(api, client, names, ready, timeout=timeout)
    filled = max([*(ready.ready.get(name, began) for name in names), began]) - began
    count_before = reconciled(metrics_url)
    cpu_before = cpu_seconds(operator.pid)
    time.sleep(STEADY_SECONDS)
    cpu = cpu_seconds(operator.pid) - cpu_before
    count_after = reconciled(metrics_url)
    rate = None
    if count_before is not None and count_after is not None:
        rate = round((count_after - count_before) / STEADY_SECONDS, 1)
    return {
        "reconciles_per_s_steady": rate,
        "memory_objects": total,
        "memory_armed": len(armed) + start_at,
        "memory_ready": sum(1 for name in names if name in ready.ready) + start_at,
        "memory_fill_s": round(filled, 1),
        "operator_rss_mib": round(rss_mib(operator.pid), 1),
        "operator_cpu_pct_steady": round(100 * cpu / STEADY_SECONDS, 1),
    }


def measure(kind: str, args: argparse.Namespace, settings: DevSettings) -> dict[str, Any]:
    with local_environment(settings, redis=True) as env:
        api = prepare(env)
        anchor_s = anchor_create_seconds(env, api, args.objects, 0.0)
        extra = dict(args.kopf_env) if kind == "kopf" else {}
        metrics_url = None
        if args.scrape_reconciles:
            port = free_port()
            extra["BEATKEEPER_METRICS_PORT"] = str(port)
            metrics_url = f"http://127.0.0.1:{port}/metrics"
        operator = start(kind, env, **extra)
        assert env.redis_url is not None
        client = redis.Redis.from_url(env.redis_url)
        idle_rss = rss_mib(operator.pid)
        names = [f"t{i:05d}" for i in range(args.objects)]
        watcher = ReadyWatch(api)
        watcher.start()
        cpu_before = process_cpu(env)
        started = time.time()
        created, armed = track(api, client, names, watcher, timeout=300)
        cpu = {
            name: round(used - cpu_before.get(name, 0.0), 1)
            for name, used in process_cpu(env).items()
        }
        ready = {name: watcher.ready[name] for name in names if name in watcher.ready}
        total = max([*ready.values(), started]) - started
        armed_ms, ready_ms = latencies(armed, created), latencies(ready, created)
        result: dict[str, Any] = {
            "operator": kind,
            "objects": args.objects,
            "armed": len(armed),
            "ready": len(ready),
            "create_s": round(max(created.values()) - started, 2),
            "anchor_create_s_no_operator": round(anchor_s, 2),
            "total_s": round(total, 2),
            "armed_p50_ms": round(statistics.median(armed_ms), 1) if armed_ms else None,
            "armed_p99_ms": round(percentile(armed_ms, 0.99), 1) if armed_ms else None,
            "ready_p50_ms": round(statistics.median(ready_ms), 1) if ready_ms else None,
            "ready_p99_ms": round(percentile(ready_ms, 0.99), 1) if ready_ms else None,
            "operator_cpu_s_burst": cpu.get(operator.name),
            "cpu_s_by_process": cpu,
            "operator_rss_idle_mib": round(idle_rss, 1),
            "sample_object": sample_meta(api, names[0]),
        }
        if args.memory_objects:
            result |= steady(
                api, client, operator, args.objects, args.memory_objects, watcher,
                args.memory_timeout, metrics_url,
            )  # fmt: skip
        result["operator_running"] = operator.running()
        result["operator_log_problems"] = log_problems(operator)
        watcher.stop()
        client.close()
    return result


def _median(rounds: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
    return round(statistics.median(values), 2) if values else None


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rounds if "error" not in r]
    keys = ("armed", "ready", "create_s", "anchor_create_s_no_operator", *COMPARED)
    figures = {key: _median(ok, key) for key in keys}
    figures["memory_armed"] = _median(ok, "memory_armed")
    figures["memory_ready"] = _median(ok, "memory_ready")
    figures["rounds_ok"] = len(ok)
    return figures


def meets(figures: dict[str, Any], objects: int) -> dict[str, bool | None]:
    def below(key: str, bound: float) -> bool | None:
        value = figures.get(key)
        return None if value is None else value < bound

    all_done = figures.get("armed") == objects and figures.get("ready") == objects
    total = figures.get("total_s")
    return {
        "all_ready_within_10s": None if total is None else bool(all_done and total <= 10),
        "ready_p50_below_100ms": below("ready_p50_ms", TARGET_P50_MS),
        "armed_p50_below_100ms": below("armed_p50_ms", TARGET_P50_MS),
        "rss_below_250mib": below("operator_rss_mib", TARGET_RSS_MIB),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--memory-objects", type=int, default=10_000, help="0 to skip")
    parser.add_argument("--memory-timeout", type=float, default=900.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--operators", default="queue,kopf", help="diagnostics: one of them")
    parser.add_argument(
        "--kopf-env", action="append", type=lambda kv: tuple(kv.split("=", 1)), default=[],
        help="KEY=VALUE for the kopf variant only (diagnostics, e.g. BENCH_KOPF_TIMER=0)",
    )  # fmt: skip
    parser.add_argument(
        "--scrape-reconciles", action="store_true",
        help="serve the operators' /metrics and count reconciles/s in the steady state",
    )  # fmt: skip
    args = parser.parse_args(argv)
    operators = tuple(kind for kind in OPERATORS if kind in args.operators.split(","))
    settings = DevSettings.from_env(os.environ)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in OPERATORS}
    for index in range(args.rounds):
        order = operators if index % 2 == 0 else operators[::-1]
        for kind in order:
            print(f"round {index + 1}: {kind}", flush=True)
            try:
                outcome = measure(kind, args, settings)
            except Exception as error:  # the other operator is still measured
                outcome = {"operator": kind, "error": f"{type(error).__name__}: {error}"}
            runs[kind].append(outcome)
            print(json.dumps(outcome), flush=True)
    figures = {kind: summary(runs[kind]) for kind in OPERATORS}
    ratios = {}
    for key in COMPARED:
        queue, kopf = figures["queue"].get(key), figures["kopf"].get(key)
        ratios[key] = round(kopf / queue, 2) if queue and kopf is not None else None
    result = {
        "bench": "queue_vs_kopf",
        "objects": args.objects,
        "memory_objects": args.memory_objects or None,
        "rounds": args.rounds,
        "kopf_env": dict(args.kopf_env),
        "scrape_reconciles": args.scrape_reconciles,
        "queue": figures["queue"],
        "kopf": figures["kopf"],
        "ratio_kopf_over_queue": ratios,
        "targets": {
            "total_s": TARGET_TOTAL_S,
            "p50_ms": TARGET_P50_MS,
            "rss_mib": TARGET_RSS_MIB,
        },
        "meets_targets": {kind: meets(figures[kind], args.objects) for kind in OPERATORS},
        "samples": {kind: [r.get("sample_object") for r in runs[kind]] for kind in OPERATORS},
        "errors": {kind: [r["error"] for r in runs[kind] if "error" in r] for kind in OPERATORS},
    }
    print(f"{'measure':<32}{'queue':>12}{'kopf':>12}{'kopf/queue':>12}")
    for key in figures["queue"]:
        queue, kopf = figures["queue"][key], figures["kopf"].get(key)
        print(f"{key:<32}{queue!s:>12}{kopf!s:>12}{ratios.get(key)!s:>12}")
    for kind in OPERATORS:
        for target, met in result["meets_targets"][kind].items():
            print(f"{kind + ' ' + target:<44}{met!s:>12}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
