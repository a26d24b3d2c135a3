"""Registers Beatkeeper's handlers with kopf; the work happens in the modules they call.

Started by `beatkeeper operator` (see `run`). Handlers are sync where they call
Redis or the Kubernetes client (kopf runs those in its thread pool) and
take only the keyword arguments they need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from beatkeeper.api.base import GROUP, VERSION
from beatkeeper.operator import admission
from beatkeeper.operator.runtime import Runtime, build_runtime, webhook_server
from beatkeeper.settings import Settings

ST = (GROUP, VERSION, "scheduledtasks")
WP = (GROUP, VERSION, "workerpools")


class PoolIndex(Mapping[tuple[str, str], Mapping[str, Any]]):
    """A kopf index of WorkerPool specs seen as a plain mapping (namespace, name) -> spec."""

    def __init__(self, index: kopf.Index[tuple[str, str], Mapping[str, Any]]) -> None:
        self._index = index

    def __getitem__(self, key: tuple[str, str]) -> Mapping[str, Any]:
        return next(iter(self._index[key]))

    def __iter__(self) -> Any:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
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
    logger.info("operator configured", extra={"webhook": config.webhook})


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
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
    """The latest body of every ScheduledTask: the resync loop and pool events walk it."""
    return {(namespace, name): snapshot(body)}


@kopf.on.validate(*ST, id="scheduledtask", operations=["CREATE", "UPDATE"], ignore_failures=True)
def validate_scheduled_task(
    operation: str,
    namespace: str,
    spec: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    workerpool_specs: kopf.Index[tuple[str, str], Any],
    **_: Any,
) -> None:
    old_spec = (old or {}).get("spec")
    message = admission.review_scheduled_task(
        operation, namespace, spec, old_spec, PoolIndex(workerpool_specs)
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
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    workerpool_specs: kopf.Index[tuple[str, str], Any],
    **_: Any,
) -> None:
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        return
    runtime: Runtime = memo["runtime"]
    runtime.scheduled_tasks.reconcile(body, PoolIndex(workerpool_specs))


@kopf.on.event(*WP)
def worker_pool_event(
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    workerpool_specs: kopf.Index[tuple[str, str], Any],
    scheduledtask_bodies: kopf.Index[tuple[str, str], Any],
    **_: Any,
) -> None:
    runtime: Runtime = memo["runtime"]
    if type != "DELETED" and not body.metadata.get("deletionTimestamp"):
        runtime.worker_pools.reconcile(body)
    # The pool's tasks may have been waiting for it, or must now stop.
    pools = PoolIndex(workerpool_specs)
    namespace, pool = body.metadata.namespace, body.metadata.name
    for task in tasks_of_pool(scheduledtask_bodies, namespace, pool):
        runtime.scheduled_tasks.reconcile(task, pools)


def tasks_of_pool(
    bodies: kopf.Index[tuple[str, str], Any], namespace: str | None, pool: str | None
) -> list[Mapping[str, Any]]:
    found = []
    for key in list(bodies):
        for task in bodies.get(key, ()):
            meta, spec = task["metadata"], task.get("spec") or {}
            if meta["namespace"] == namespace and spec.get("workerPool") == pool:
                found.append(task)
    return found


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a body the reconcilers and event posting need."""
    meta = body["metadata"]
    keep = ("name", "namespace", "uid", "generation", "creationTimestamp", "annotations")
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {key: meta[key] for key in keep if key in meta},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


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
