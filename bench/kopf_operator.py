"""The operator with kopf's per-object machinery for ScheduledTasks (for bench.queue_vs_kopf).

The same runtime (`build_runtime`), admission webhook (`start_admission`), metrics,
kopf settings (finalizer name, annotation progress and diff-base storage, posting
level, watch timeout, 32 handler threads) and the same WorkerPool handlers and
indexes as `beatkeeper.operator.main` (the very functions, registered again on a
registry of this module's own, so nothing of main.py's registry is served). Only
the ScheduledTask path differs:

- `@kopf.on.resume`, `@kopf.on.create`, `@kopf.on.update` (whole object: spec,
  labels, annotations) each reconcile that one object
  (`runtime.scheduled_tasks.reconcile(body, pools)`), in kopf's thread pool;
- `@kopf.timer(interval=BEATKEEPER_RESYNC_SECONDS)` per object is the resync
  (first run one interval after the object is first seen: the create/resume
  handler has just reconciled it);
- `@kopf.on.delete` reconciles the deleting object (the reconciler deletes the entry,
  marks the object deleted, then removes our finalizer `beatkeeper.api.base.FINALIZER`);
  kopf's own finalizer (`kopf.<FINALIZER>`, needed by the timer) goes after it.
  An `@kopf.on.event` handler filtered to DELETED forgets the object as main.py
  does (its entry, its run view).

No work queue and no resync loop. What main.py puts on its queue from elsewhere
(a pool whose spec changed, an object that fired, seen in the run records) is
reconciled here at once, object by object (`PerObject`). The run-record consumer
loop is kept as it is. Not covered: the orphan sweep of main.py's resync (entries
of objects deleted while the operator was away), and a status-only change that
crosses spec.failureThreshold (kopf's change handlers do not see status; the
timer picks it up within one resync period).

    KUBECONFIG=... BEATKEEPER_REDIS_URL=... BEATKEEPER_WEBHOOK=local \\
        .venv/bin/python -m bench.kopf_operator

BENCH_KOPF_TIMER=0 leaves the timer out (a diagnostic only: what the timers cost;
without them nothing is level-triggered).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import Any

import kopf

from beatkeeper.api.base import FINALIZER
from beatkeeper.operator import loops, main
from beatkeeper.operator.deployments import APP_NAME, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from beatkeeper.operator.indexes import IndexView, SpecGenerations, snapshot
from beatkeeper.operator.runtime import (
    Runtime,
)
from beatkeeper.operator.settings import OperatorSettings
from beatkeeper.operator.supervision import LoopSupervisor

ST, WP = main.ST, main.WP
Index = main.Index
logger = logging.getLogger(__name__)


class PerObject:
    """Stands in for main.py's work queue where others hand it objects: each object is
    reconciled on its own, at once (no coalescing, no batching)."""

    def __init__(self, runtime: Runtime, tasks: IndexView, pools: IndexView) -> None:
        self.runtime, self.tasks, self.pools = runtime, tasks, pools
        self._running: set[asyncio.Task[None]] = set()

    def _reconcile(self, key: tuple[str, str]) -> None:
        body = self.tasks.get(key)
        if body is not None:
            self.runtime.scheduled_tasks.reconcile(body, self.pools)

    def add(self, keys: Iterable[tuple[str, str]]) -> None:
        """From the event loop (the run-record consumer: objects that fired)."""
        for key in set(keys):
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._reconcile, key))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def add_threadsafe(self, keys: Iterable[tuple[str, str]]) -> None:
        """From a sync handler's thread (the WorkerPool event handler): here and now."""
        for key in set(keys):
            self._reconcile(key)


async def startup(
    *,
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: kopf.Logger,
    scheduledtask_bodies: Index,
    workerpool_specs: Index,
    workerpool_registered: Index,
    workerpool_uids: Index,
    **_: Any,
) -> None:
    """main.startup without the work queue and the resync loop."""
    config = OperatorSettings.from_env(os.environ)
    main.configure(settings)
    tasks, pools = IndexView(scheduledtask_bodies), IndexView(workerpool_specs)
    registered = IndexView(workerpool_registered)
    runtime = await main.start_runtime(config, memo, tasks, pools, registered)
    per_object = memo["queue"] = PerObject(runtime, tasks, pools)
    memo["pool_generations"] = SpecGenerations()
    supervisor = memo["loops"] = LoopSupervisor()
    supervisor.start(
        "run-records",
        lambda: loops.consume_records_forever(runtime, tasks, per_object),  # type: ignore[arg-type]
    )
    logger.info("operator (kopf per-object variant) configured", extra={"webhook": config.webhook})


def reconcile_one(*, body: kopf.Body, memo: kopf.Memo, workerpool_specs: Index, **_: Any) -> None:
    """This one object, level-triggered: its entry, its finalizer, its status."""
    runtime: Runtime = memo["runtime"]
    runtime.scheduled_tasks.reconcile(snapshot(body), IndexView(workerpool_specs))


def finalize_one(*, body: kopf.Body, memo: kopf.Memo, workerpool_specs: Index, **_: Any) -> None:
    """Deleting: the reconcile removes the entry, then our finalizer; without our
    finalizer (removed by hand) the entry goes here."""
    runtime: Runtime = memo["runtime"]
    task = snapshot(body)
    runtime.scheduled_tasks.reconcile(task, IndexView(workerpool_specs))
    if FINALIZER not in (task["metadata"].get("finalizers") or []):
        meta = task["metadata"]
        runtime.scheduled_tasks.forget(meta["namespace"], meta["name"])


async def forget_deleted(*, namespace: str, name: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """DELETED, as main.py handles it: the entry goes (idempotent), the run view too."""
    runtime: Runtime = memo["runtime"]
    await asyncio.to_thread(runtime.scheduled_tasks.forget, namespace, name)
    runtime.run_status.forget(uid)


def _deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


def build_registry(config: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    # main.py's own functions, unchanged: login, cleanup, probes, indexes, WorkerPool handlers.
    kopf.on.login(registry=registry)(main.login)
    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(main.cleanup)
    kopf.on.probe(id="loops", registry=registry)(main.loops_probe)
    kopf.on.probe(id="objectsInTrouble", registry=registry)(main.trouble_probe)
    for index in (main.workerpool_specs, main.workerpool_registered, main.workerpool_uids):
        kopf.index(*WP, registry=registry)(index)
    kopf.index(*ST, registry=registry)(main.scheduledtask_bodies)
    kopf.index(*ST, registry=registry)(main.scheduledtask_slots)
    kopf.index(
        "apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY},
        registry=registry,
    )(main.worker_deployments)  # fmt: skip
    kopf.index(
        "", "v1", "pods",
        labels={MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: APP_NAME},
        registry=registry,
    )(main.worker_pods)  # fmt: skip
    kopf.on.event(*WP, registry=registry)(main.worker_pool_event)
    kopf.daemon(*WP, id="workers", backoff=2, cancellation_timeout=10, registry=registry)(
        main.worker_pool_daemon
    )
    # The ScheduledTask path, kopf's way.
    kopf.on.resume(*ST, id="resume", registry=registry)(reconcile_one)
    kopf.on.create(*ST, id="create", registry=registry)(reconcile_one)
    kopf.on.update(*ST, id="update", registry=registry)(reconcile_one)
    kopf.on.delete(*ST, id="delete", registry=registry)(finalize_one)
    kopf.on.event(*ST, id="deleted", when=_deleted, registry=registry)(forget_deleted)
    if os.environ.get("BENCH_KOPF_TIMER", "1") != "0":  # 0: a diagnostic, not level-triggered
        resync = config.resync_seconds
        kopf.timer(*ST, id="resync", interval=resync, initial_delay=resync, registry=registry)(
            reconcile_one
        )
    return registry


def run() -> None:
    """main.run with this module's registry."""
    config = OperatorSettings.from_env(os.environ)
    endpoint = f"http://{config.health_listen}:{config.health_port}/healthz"
    liveness = endpoint if config.health_port else None
    kopf.configure(verbose=False)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    kopf.run(
        registry=build_registry(config),
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
    )


if __name__ == "__main__":
    run()
