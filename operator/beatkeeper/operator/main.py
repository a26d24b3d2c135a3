"""Registers Beatkeeper's handlers with kopf; the work happens in the modules they call.

Started by `beatkeeper operator` (see `run`). Handlers that call Redis or the
Kubernetes client are sync (kopf runs them in its thread pool) and take only
the keyword arguments they need.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
import redis

from beatkeeper.api.base import FINALIZER, GROUP, VERSION
from beatkeeper.operator import loops, scheduledtasks, workerpools
from beatkeeper.operator.access import AccessChecker
from beatkeeper.operator.deployments import (
    APP_NAME,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    POOL_LABEL,
    ObservedDeployment,
    selector_labels,
)
from beatkeeper.operator.indexes import (
    IndexView,
    SpecGenerations,
    reconcile_fingerprint,
    snapshot,
    tasks_of_pool,
)
from beatkeeper.operator.kubeapi import USER_AGENT
from beatkeeper.operator.podhealth import ObservedPod
from beatkeeper.operator.runtime import (
    Admission,
    Runtime,
    build_runtime,
    serve_metrics,
    start_admission,
    utc_now,
)
from beatkeeper.operator.settings import OperatorSettings
from beatkeeper.operator.supervision import LoopsUnhealthy, LoopSupervisor
from beatkeeper.operator.webhook import Known

ST = (GROUP, VERSION, "scheduledtasks")
WP = (GROUP, VERSION, "workerpools")
Index = kopf.Index[tuple[str, str], Any]


@kopf.on.login()
async def login(logger: logging.Logger, **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own login through the Kubernetes client, in a session that says who we
    are: kopf's writes (its finalizer, its annotations) get the field manager
    "beatkeeper", as the operator's own writes do (see kubeapi.USER_AGENT)."""
    info = kopf.login_via_client(logger=logger, **kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers={**info.as_http_headers(), "User-Agent": USER_AGENT},
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        aiohttp_session=session,
    )


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator (bench/kopf_operator.py uses them too)."""
    # Kopf removes its own finalizer from objects no deletion handler needs, so
    # it must not share a name with ours (which the reconciler manages).
    settings.persistence.finalizer = f"kopf.{FINALIZER}"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING  # our events are explicit, not every log line
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 32


async def start_runtime(
    config: OperatorSettings,
    memo: kopf.Memo,
    tasks: IndexView,
    pools: IndexView,
    registered: IndexView,
) -> Runtime:
    """The runtime, the admission webhook and /metrics, kept in `memo`."""

    def namespaces() -> set[str]:
        return {namespace for namespace, _ in pools} | {namespace for namespace, _ in tasks}

    runtime = await asyncio.to_thread(build_runtime, config, utc_now, namespaces)
    memo["runtime"] = runtime
    access = AccessChecker.for_client(runtime.kube.client)  # a WorkerPool author's rights
    runtime.closers.append(access.close)
    known = Known(
        pools=lambda: pools, tasks=lambda: tasks, registered=lambda: registered, access=access
    )
    memo["admission"] = await asyncio.to_thread(start_admission, config, runtime.kube, known)
    if config.metrics_port:
        memo["metrics"] = await asyncio.to_thread(serve_metrics, runtime, tasks, config)
    return runtime


@kopf.on.startup()
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
    config = OperatorSettings.from_env(os.environ)
    configure(settings)
    tasks, pools = IndexView(scheduledtask_bodies), IndexView(workerpool_specs)
    registered, uids = IndexView(workerpool_registered), IndexView(workerpool_uids)
    runtime = await start_runtime(config, memo, tasks, pools, registered)

    def live_pools() -> set[tuple[str, str]]:
        return {(namespace, str(uids[(namespace, name)])) for namespace, name in uids}

    queue = memo["queue"] = loops.WorkQueue()
    memo["reconciled_fingerprints"] = {}
    memo["pool_generations"] = SpecGenerations()
    supervisor = memo["loops"] = LoopSupervisor()
    supervisor.start("queue", lambda: loops.reconcile_queued_forever(runtime, queue, tasks, pools))
    supervisor.start("resync", lambda: loops.resync_forever(runtime, tasks, pools, live_pools))
    supervisor.start("run-records", lambda: loops.consume_records_forever(runtime, tasks, queue))
    logger.info("operator configured", extra={"webhook": config.webhook})


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    supervisor: LoopSupervisor | None = memo.get("loops")
    if supervisor is not None:
        supervisor.cancel()
    admission_server: Admission | None = memo.get("admission")
    if admission_server is not None:
        await asyncio.to_thread(admission_server.stop)
    metrics_server = memo.get("metrics")
    if metrics_server is not None:
        await asyncio.to_thread(metrics_server.shutdown)
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await asyncio.to_thread(runtime.close)


@kopf.on.probe(id="loops")
async def loops_probe(memo: kopf.Memo, **_: Any) -> dict[str, dict[str, object]]:
    """/healthz: the background loops; failing once one was given up on (a restart helps)."""
    supervisor: LoopSupervisor = memo["loops"]
    try:
        return supervisor.check()
    except LoopsUnhealthy as error:
        raise kopf.PermanentError(str(error)) from None


@kopf.on.probe(id="objectsInTrouble")
async def trouble_probe(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    """/healthz: how many objects are backing off, and run records parked so far."""
    runtime: Runtime = memo["runtime"]
    parked = await asyncio.to_thread(_parked, runtime)
    return {
        "scheduledTasks": len(runtime.scheduled_tasks.troubles),
        "runRecordObjects": len(runtime.run_status.troubles),
        "parkedRunRecords": parked,
    }


def _parked(runtime: Runtime) -> int:
    try:
        return runtime.records.parked()
    except redis.RedisError:
        return -1  # unknown while Redis is away


# Index functions are async: pure and cheap, they need no hop to a thread.
@kopf.index(*WP)
async def workerpool_specs(
    namespace: str, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], Any]:
    return {(namespace, name): dict(spec)}


@kopf.index(*WP)
async def workerpool_registered(
    namespace: str, name: str, status: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], Any]:
    """The task names each pool's workers register (status.registeredTasks), for admission."""
    return {(namespace, name): tuple(status.get("registeredTasks") or ())}


@kopf.index(*WP)
async def workerpool_uids(
    namespace: str, name: str, uid: str, **_: Any
) -> dict[tuple[str, str], Any]:
    """Each pool's uid: under Redis tenancy, passwords of pools gone are collected."""
    return {(namespace, name): uid}


@kopf.index(*ST)
async def scheduledtask_bodies(
    namespace: str, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], Any]:
    """The latest body of every ScheduledTask: the loops and pool events walk it."""
    return {(namespace, name): snapshot(body)}


@kopf.on.event(*ST)
async def scheduled_task_event(
    *,
    type: str | None,
    namespace: str,
    name: str,
    uid: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Only marks the object dirty: the work queue reconciles it (coalesced, batched).

    A deleting object is dirty too: its reconcile removes the entry, then our
    finalizer. DELETED (gone without our finalizer) removes the entry at once.
    Events that changed only status are skipped (`reconcile_fingerprint`),
    unless the run records' status write crossed spec.failureThreshold, which
    changes the object's health.
    """
    runtime: Runtime = memo["runtime"]
    seen: dict[str, int] = memo["reconciled_fingerprints"]
    if type == "DELETED":
        seen.pop(uid, None)
        await asyncio.to_thread(runtime.scheduled_tasks.forget, namespace, name)
        runtime.run_status.forget(uid)
        return
    fingerprint = reconcile_fingerprint(meta, scheduledtasks.runs_failing(spec, status))
    if seen.get(uid) == fingerprint:
        return
    seen[uid] = fingerprint
    queue: loops.WorkQueue = memo["queue"]
    queue.add([(namespace, name)])


@kopf.index(*ST)
async def scheduledtask_slots(
    namespace: str, name: str, meta: kopf.Meta, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], Any]:
    """Each ScheduledTask's schedule under its pool's key: the pool's pre-warm reads them."""
    pool = str(spec.get("workerPool", ""))
    return {(namespace, pool): workerpools.slot_source(namespace, name, meta, spec)}


@kopf.index("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY})
async def worker_deployments(
    namespace: str, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], ObservedDeployment]:
    """The pools' Deployments as last seen: the reconciler reads them, never polls the API."""
    return {(namespace, name): ObservedDeployment.from_body(body)}


@kopf.index("", "v1", "pods", labels={MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: APP_NAME})
async def worker_pods(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], ObservedPod]:
    """The pools' pods, under their pool's label: why pods cannot start is read from them."""
    return {(namespace, labels.get(POOL_LABEL, "")): ObservedPod.from_body(body)}


def pods_of(index: Index, namespace: str, pool: str) -> list[ObservedPod]:
    return list(index.get((namespace, selector_labels(pool)[POOL_LABEL]), ()))


@kopf.on.event(*WP)
def worker_pool_event(
    *,
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    scheduledtask_bodies: Index,
    scheduledtask_slots: Index,
    worker_deployments: Index,
    worker_pods: Index,
    **_: Any,
) -> None:
    """A new spec converges at once (`kubectl scale` included); the daemon does the rest."""
    runtime: Runtime = memo["runtime"]
    if type == "DELETED":
        runtime.worker_pools.forget(
            body.metadata.uid, (body.metadata.namespace, body.metadata.name)
        )
        runtime.worker_pools.release_credential(body.metadata.namespace, body.metadata.uid)
    # The pool's tasks may have been waiting for it, or must stop now; only a
    # new spec (or the pool's arrival or removal) can change that, not its status.
    generations: SpecGenerations = memo["pool_generations"]
    deleted = type == "DELETED"
    if not generations.changed(body.metadata.uid, body.metadata.get("generation"), deleted=deleted):
        return
    tasks = tasks_of_pool(
        IndexView(scheduledtask_bodies), body.metadata.namespace, body.metadata.name
    )
    queue: loops.WorkQueue = memo["queue"]
    queue.add_threadsafe(
        (task["metadata"]["namespace"], task["metadata"]["name"]) for task in tasks
    )
    if not deleted and not body.metadata.get("deletionTimestamp"):
        namespace, name = body.metadata.namespace, body.metadata.name
        slots = scheduledtask_slots.get((namespace, name), ())
        pods = pods_of(worker_pods, namespace, name)
        runtime.worker_pools.reconcile(body, list(slots), IndexView(worker_deployments), pods)


@kopf.daemon(*WP, id="workers", backoff=2, cancellation_timeout=10)
async def worker_pool_daemon(
    *,
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    memo: kopf.Memo,
    scheduledtask_slots: Index,
    worker_deployments: Index,
    worker_pods: Index,
    **_: Any,
) -> None:
    """Level-triggered, every pollSeconds: measure the backlog, converge, write status.

    A daemon rather than a timer: the interval is the pool's own and follows
    its spec, and the loop ends with the pool (its Deployment then goes by
    owner-reference garbage collection). An error ends the loop and kopf
    starts it again after `backoff` seconds.
    """
    runtime: Runtime = memo["runtime"]
    deployments = IndexView(worker_deployments)
    while not stopped:
        pool = snapshot(body)  # the live body changes under us; the thread gets a copy
        key = (pool["metadata"]["namespace"], pool["metadata"]["name"])
        slots = list(scheduledtask_slots.get(key, ()))
        pods = pods_of(worker_pods, *key)
        interval = await asyncio.to_thread(
            runtime.worker_pools.reconcile, pool, slots, deployments, pods
        )
        await stopped.wait(interval)


def run() -> None:
    """Run the operator in the foreground until SIGINT/SIGTERM."""
    config = OperatorSettings.from_env(os.environ)
    endpoint = f"http://{config.health_listen}:{config.health_port}/healthz"
    liveness = endpoint if config.health_port else None
    kopf.configure(verbose=False)
    # Per-event "Handler succeeded" and per-request access lines would cost more
    # than the work at thousands of objects; warnings and errors still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
    )
