"""Queue-aware autoscaling, measured end to end, next to KEDA's documented defaults.

A real local control plane (kube-apiserver and controller-manager) with a real
node (kubelet, containerd: worker pods of the worker image), Redis on the pod
network, the operator and beat. Two measurements:

1. Burst: N runs of `beatkeeper.sleep` land at once on the queue of a pool at
   zero replicas. Measured from the publish: the Deployment's replicas raised
   (the operator's decision), the first worker Ready (includes the pod's
   start: sandbox, container, Celery), every run finished (backlog drained),
   and the Deployment back at zero (after the scale-down window). Repeated
   `--rounds` times; medians.
2. Pre-warm: a ScheduledTask with a one-off `at` slot targets a pool at zero,
   once with `prewarmSeconds` and once with pre-warm off. Cold-start lateness =
   how long after the slot the first worker was Ready (0 when it was Ready
   before the slot); run lateness = the run's `Running` record minus the slot.

    .venv/bin/python -m bench.autoscale [--runs 40] [--rounds 3] [--window 10]

Prints a table, then one JSON line:
{"bench": "autoscale", "raise_p50_s": ..., "keda_polling_interval_s": 30, ...}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes
import redis
from kubernetes.client import AppsV1Api

from beatkeeper_core import contract, keys
from beatkeeper_core.publish import publish_runs
from beatkeeper_devenv.environment import Environment, local_environment
from beatkeeper_devenv.kube import install_crds, kubectl
from beatkeeper_devenv.settings import DevSettings
from beatkeeper_devenv.system import start_system
from beatkeeper_worker.app import create_app
from beatkeeper_worker.runtime import runtime_for
from beatkeeper_worker.settings import WorkerSettings

NAMESPACE = "bench-autoscale"
KEDA_POLLING_INTERVAL_S = 30  # ScaledObject pollingInterval default
KEDA_COOLDOWN_PERIOD_S = 300  # ScaledObject cooldownPeriod default
CONCURRENCY = 2
MAX_REPLICAS = 4
SAMPLE_S = 0.05
WORKER_IMAGE = "beatkeeper-worker:0.1.0"  # built and imported into the node by `make images`


def pool(name: str, *, window: int, prewarm: int) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "image": WORKER_IMAGE,
            "allowedTasks": ["beatkeeper.*"],
            "concurrency": CONCURRENCY,
            "autoscaling": {
                "maxReplicas": MAX_REPLICAS,
                "scaleDown": {"stabilizationSeconds": window},
                "prewarmSeconds": prewarm,
            },
        },
    }


def one_off(name: str, pool_name: str, slot: dt.datetime) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "at": contract.format_slot(slot),
            "workerPool": pool_name,
            "task": {"name": "beatkeeper.sleep", "args": [0.1]},
        },
    }


def apply(env: Environment, manifest: dict[str, Any]) -> None:
    kubectl(env.kubeconfig, "apply", "-f", "-", stdin=json.dumps(manifest))


@dataclass
class Pools:
    """Reads one pool's Deployment and status through the API."""

    apps: AppsV1Api
    custom: Any

    def replicas(self, name: str) -> int:
        try:
            found = self.apps.read_namespaced_deployment(f"{name}-workers", NAMESPACE)
        except kubernetes.client.exceptions.ApiException as error:
            if error.status == 404:
                return 0
            raise
        return int(found.spec.replicas or 0) if found.spec else 0

    def status(self, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(
            "beatkeeper.dev", "v1alpha1", NAMESPACE, "workerpools", name
        )
        return dict(body.get("status") or {})

    def ready(self, name: str) -> int:
        return int(self.status(name).get("readyReplicas") or 0)

    def scaled_to_zero(self, name: str) -> bool:
        status = self.status(name)
        reasons = {c["type"]: c.get("reason") for c in status.get("conditions") or []}
        return reasons.get("Ready") == "ScaledToZero" and not status.get("readyReplicas")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll until `check` is truthy; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(SAMPLE_S)
    return time.monotonic()


def finished_runs(client: redis.Redis, prefix: str) -> int:
    """Runs of this object whose final record is in the stream."""
    done = set()
    for record in contract.stream_records(client.xrange(keys.RUN_RECORDS_STREAM)):  # type: ignore[arg-type]
        if record.run_id.startswith(prefix) and record.state in ("Succeeded", "Failed"):
            done.add(record.run_id)
    return len(done)


def burst(
    pools: Pools, client: redis.Redis, redis_url: str, runs: int, seconds: float, window: int
) -> dict[str, float]:
    name = f"burst-{uuid.uuid4().hex[:6]}"
    pool_name = "burst"
    app = create_app(WorkerSettings(broker_url=redis_url))
    base = dt.datetime.now(dt.UTC).replace(microsecond=0)
    call = contract.TaskCall(name="beatkeeper.sleep", args=[seconds])
    queue = contract.queue_name(NAMESPACE, pool_name)
    envelopes = [
        (
            contract.RunEnvelope.for_slot(
                NAMESPACE, name, base + dt.timedelta(seconds=i), call, contract.RunPolicy()
            ),
            queue,
        )
        for i in range(runs)
    ]
    published = time.monotonic()
    publish_runs(app, envelopes, registry=runtime_for(app).registry())
    app.close()
    raised = wait_for(lambda: pools.replicas(pool_name) > 0, 60, "replicas raised")
    ready = wait_for(lambda: pools.ready(pool_name) > 0, 120, "a worker Ready")
    prefix = f"{NAMESPACE}/{name}@"
    drained = wait_for(lambda: finished_runs(client, prefix) == runs, 600, "every run finished")
    zero = wait_for(lambda: pools.replicas(pool_name) == 0, window + 120, "back at zero")
    wait_for(lambda: pools.scaled_to_zero(pool_name), 120, "no worker left")
    return {
        "raise_s": raised - published,
        "first_ready_s": ready - published,
        "drain_s": drained - published,
        "scale_down_after_drain_s": zero - drained,
    }


def first_running(client: redis.Redis, prefix: str) -> contract.RunRecord | None:
    for record in contract.stream_records(client.xrange(keys.RUN_RECORDS_STREAM)):  # type: ignore[arg-type]
        if record.run_id.startswith(prefix) and record.state == "Running":
            return record
    return None


def scheduled_slot(
    env: Environment, pools: Pools, client: redis.Redis, *, prewarm: int, window: int, lead: int
) -> dict[str, float]:
    """One one-off slot on a pool at zero; lateness of its first Ready worker and of the run."""
    pool_name = f"slot-{prewarm}"
    apply(env, pool(pool_name, window=window, prewarm=prewarm))
    wait_for(lambda: pools.scaled_to_zero(pool_name), 60, f"{pool_name} at zero")
    slot = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=lead)
    task_name = f"once-{uuid.uuid4().hex[:6]}"
    apply(env, one_off(task_name, pool_name, slot))
    wait_for(lambda: pools.ready(pool_name) > 0, lead + 120, f"{pool_name}: a worker Ready")
    ready_at = dt.datetime.now(dt.UTC)
    prefix = f"{NAMESPACE}/{task_name}@"
    deadline = time.monotonic() + 120
    record = first_running(client, prefix)
    while record is None and time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
        record = first_running(client, prefix)
    if record is None:
        raise TimeoutError(f"{task_name}: the slot's run never started")
    return {
        "cold_start_lateness_s": max(0.0, (ready_at - slot).total_seconds()),
        "ready_before_slot_s": max(0.0, (slot - ready_at).total_seconds()),
        "run_lateness_s": (record.time - slot).total_seconds(),
    }


def median(rounds: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 2)


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("backlog appears -> replicas raised", result["raise_p50_s"], "<= 30 (pollingInterval)"),
        ("backlog appears -> first worker Ready", result["first_ready_p50_s"], "-"),
        ("backlog appears -> drained", result["drain_p50_s"], "-"),
        (
            "drained -> scaled to zero",
            result["scale_down_after_drain_p50_s"],
            "300 (cooldownPeriod)",
        ),
        ("slot, pre-warmed: cold-start lateness", result["prewarm_cold_start_s"], "no pre-warm"),
        ("slot, pre-warmed: run lateness", result["prewarm_run_lateness_s"], "-"),
        ("slot, no pre-warm: cold-start lateness", result["cold_cold_start_s"], "-"),
        ("slot, no pre-warm: run lateness", result["cold_run_lateness_s"], "-"),
    ]
    print(f"{'measure (medians, seconds)':<42}{'beatkeeper':>12}   KEDA default")
    for label, ours, keda in rows:
        print(f"{label:<42}{ours:>12}   {keda}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per burst")
    parser.add_argument("--seconds", type=float, default=1.0, help="each run's duration")
    parser.add_argument("--rounds", type=int, default=3, help="bursts measured")
    parser.add_argument("--window", type=int, default=10, help="scale-down stabilization, s")
    parser.add_argument("--prewarm", type=int, default=10, help="prewarmSeconds of the slot pool")
    args = parser.parse_args(argv)
    settings = DevSettings.from_env(os.environ)
    with local_environment(settings, redis=True, node=True) as env:
        assert env.redis_url is not None
        install_crds(env.kubeconfig, settings.crds_dir)
        start_system(env)
        kubectl(env.kubeconfig, "create", "namespace", NAMESPACE)
        kubectl(
            env.kubeconfig,
            "create",
            "secret",
            "generic",
            "beatkeeper-redis",
            "-n",
            NAMESPACE,
            f"--from-literal=url={env.redis_url}",
        )
        api = kubernetes.config.new_client_from_config(str(env.kubeconfig))
        pools = Pools(AppsV1Api(api), kubernetes.client.CustomObjectsApi(api))
        client = redis.Redis.from_url(env.redis_url)
        apply(env, pool("burst", window=args.window, prewarm=0))
        wait_for(lambda: pools.scaled_to_zero("burst"), 60, "burst pool at zero")
        rounds = [
            burst(pools, client, env.redis_url, args.runs, args.seconds, args.window)
            for _ in range(args.rounds)
        ]
        lead = args.prewarm + 10
        warm = scheduled_slot(
            env, pools, client, prewarm=args.prewarm, window=args.window, lead=lead
        )
        cold = scheduled_slot(env, pools, client, prewarm=0, window=args.window, lead=lead)
        client.close()
        api.close()
    result = {
        "bench": "autoscale",
        "runs_per_burst": args.runs,
        "run_seconds": args.seconds,
        "rounds": args.rounds,
        "concurrency": CONCURRENCY,
        "max_replicas": MAX_REPLICAS,
        "poll_seconds": 1,
        "scale_down_window_s": args.window,
        "raise_p50_s": median(rounds, "raise_s"),
        "raise_max_s": round(max(r["raise_s"] for r in rounds), 2),
        "first_ready_p50_s": median(rounds, "first_ready_s"),
        "drain_p50_s": median(rounds, "drain_s"),
        "scale_down_after_drain_p50_s": median(rounds, "scale_down_after_drain_s"),
        "prewarm_seconds": args.prewarm,
        "prewarm_cold_start_s": round(warm["cold_start_lateness_s"], 2),
        "prewarm_ready_before_slot_s": round(warm["ready_before_slot_s"], 2),
        "prewarm_run_lateness_s": round(warm["run_lateness_s"], 2),
        "cold_cold_start_s": round(cold["cold_start_lateness_s"], 2),
        "cold_run_lateness_s": round(cold["run_lateness_s"], 2),
        "target_raise_s": 2,
        "keda_polling_interval_s": KEDA_POLLING_INTERVAL_S,
        "keda_cooldown_period_s": KEDA_COOLDOWN_PERIOD_S,
        "per_round": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
    }
    print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
