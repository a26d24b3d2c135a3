"""Registers Beatkeeper's handlers with kopf; the work happens in the modules they call.

Started by `beatkeeper operator` (see `run`). Handlers that call Redis or the
Kubernetes client are sync (kopf runs them in its thread pool) and take only
the keyword arguments they need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from beatkeeper.api.base import GROUP, VERSION
from beatkeeper.operator import admission, loops
from beatkeeper.operator.indexes import IndexView, snapshot, tasks_of_pool
from beatkeeper.operator.runtime import Runtime, build_runtime, webhook_server
from beatkeeper.settings import Settings

ST = (GROUP, VERSION, "scheduledtasks")
WP = (GROUP, VERSION, "workerpools")
Index = kopf.Index[tuple[str, str], Any]


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: kopf.Logger,
    scheduledtask_bodies: Index,
    workerpool_specs: Index,
    **_: Any,
) -> None:
    config = Settings.from_env().operator
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING  # our events are explicit, not every log line
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 16
    server = webhook_server(config)
    if server is not None:
        settings.admission.server = server
        settings.admission.managed = GROUP if config.webhook == "local" else None
    runtime = await asyncio.to_thread(build_runtime, config)
    memo["runtime"] = runtime
    tasks, pools = IndexView(scheduledtask_bodies), IndexView(workerpool_specs)
    memo["loops"] = [
        asyncio.create_task(loops.resync_forever(runtime, tasks, pools), name="resync"),
        asyncio.create_task(loops.consume_records_forever(runtime, tasks), name="run-records"),
    ]
    logger.info("operator configured", extra={"webhook": config.webhook})


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("loops", []):
        task.cancel()
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await asyncio.to_thread(runtime.close)


@kopf.index(*WP)
def workerpool_specs(
    namespace: str, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], Any]:
    return {(namespace, name): dict(spec)}


@kopf.index(*ST)
def scheduledtask_bodies(
    namespace: str, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], Any]:
    """The latest body of every ScheduledTask: the loops and pool events walk it."""
    return {(namespace, name): snapshot(body)}


@kopf.on.validate(*ST, id="scheduledtask", operations=["CREATE", "UPDATE"], ignore_failures=True)
def validate_scheduled_task(
    operation: str,
    namespace: str,
    spec: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    workerpool_specs: Index,
    **_: Any,
) -> None:
    old_spec = (old or {}).get("spec")
    message = admission.review_scheduled_task(
        operation, namespace, spec, old_spec, IndexView(workerpool_specs)
    )
    if message:
        raise kopf.AdmissionError(message, code=422)


@kopf.on.validate(*WP, id="workerpool", operations=["CREATE", "UPDATE"], ignore_failures=True)
def validate_worker_pool(
    operation: str, spec: Mapping[str, Any], old: Mapping[str, Any] | None, **_: Any
) -> None:
    message = admission.review_worker_pool(operation, spec, (old or {}).get("spec"))
    if message:
        raise kopf.AdmissionError(message, code=422)


@kopf.on.event(*ST)
def scheduled_task_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, workerpool_specs: Index, **_: Any
) -> None:
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        return
    runtime: Runtime = memo["runtime"]
    runtime.scheduled_tasks.reconcile(snapshot(body), IndexView(workerpool_specs))


@kopf.on.delete(*ST, id="remove-entry")
def scheduled_task_deleted(namespace: str, name: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """The finalizer's work: the redbeat entry goes before the object does."""
    runtime: Runtime = memo["runtime"]
    runtime.scheduled_tasks.forget(namespace, name)
    runtime.run_status.forget(uid)


@kopf.on.event(*WP)
def worker_pool_event(
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    workerpool_specs: Index,
    scheduledtask_bodies: Index,
    **_: Any,
) -> None:
    runtime: Runtime = memo["runtime"]
    if type != "DELETED" and not body.metadata.get("deletionTimestamp"):
        runtime.worker_pools.reconcile(body)
    # The pool's tasks may have been waiting for it, or must stop now.
    tasks = tasks_of_pool(
        IndexView(scheduledtask_bodies), body.metadata.namespace, body.metadata.name
    )
    if tasks:
        runtime.scheduled_tasks.reconcile_many(tasks, IndexView(workerpool_specs))


def run() -> None:
    """Run the operator in the foreground until SIGINT/SIGTERM."""
    config = Settings.from_env().operator
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    kopf.configure(verbose=False)
    kopf.run(
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
    )
