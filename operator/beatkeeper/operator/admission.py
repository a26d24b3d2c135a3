"""Admission review for both kinds: what the CRD schema and CEL cannot check.

Pure functions from the request (operation, new and old spec, the WorkerPools
known in the namespace) to an error message or None. The kopf wiring in `main`
turns a message into a refusal that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from beatkeeper.api.validation import (
    FieldError,
    InvalidSpec,
    parse_scheduled_task,
    parse_worker_pool,
    task_allowed,
    task_errors,
)
from beatkeeper.api.workerpool import WorkerPoolSpec

PoolSpecs = Mapping[tuple[str, str], Mapping[str, Any]]  # (namespace, name) -> spec


def _unchanged(
    operation: str | None, spec: Mapping[str, Any] | None, old_spec: Mapping[str, Any] | None
) -> bool:
    # Metadata-only updates (finalizer removal, labels, run-now annotations) must
    # pass even for an object stored while the webhook was down, or it could
    # never be deleted. A spec that is not an object is never stored (the CRD
    # schema refuses it); it is validated, and so refused, like any other.
    new = {} if spec is None else spec
    return (
        operation == "UPDATE"
        and isinstance(new, Mapping)
        and isinstance(old_spec, Mapping)
        and dict(new) == dict(old_spec)
    )


def _known_pool(pools: PoolSpecs, namespace: str, name: str) -> WorkerPoolSpec | None:
    raw = pools.get((namespace, name))
    if raw is None:
        return None
    try:
        return parse_worker_pool(raw)
    except InvalidSpec:
        return None  # that pool is Stalled itself; its own status says why


def review_scheduled_task(
    operation: str | None,
    namespace: str,
    spec: Mapping[str, Any] | None,
    old_spec: Mapping[str, Any] | None,
    pools: PoolSpecs,
) -> str | None:
    """None to admit, or the refusal message naming the field and the reason."""
    if _unchanged(operation, spec, old_spec):
        return None
    errors = scheduled_task_errors(namespace, spec, pools)
    return str(InvalidSpec(errors)) if errors else None


def scheduled_task_errors(
    namespace: str, spec: Mapping[str, Any] | None, pools: PoolSpecs
) -> list[FieldError]:
    """Every field error of a ScheduledTask spec; its task is checked against its pool
    when the pool is known."""
    errors: list[FieldError] = []
    try:
        parse_scheduled_task(spec)
    except InvalidSpec as error:
        errors += error.errors
    if not isinstance(spec, Mapping):
        return errors  # "spec: Input should be an object"
    pool_name = str(spec.get("workerPool", ""))
    pool = _known_pool(pools, namespace, pool_name)
    task = spec.get("task")
    task_name = task.get("name") if isinstance(task, Mapping) else None
    if pool is not None and isinstance(task_name, str):
        errors += task_errors(task_name, pool_name, pool)
    return errors


def review_worker_pool(
    operation: str | None, spec: Mapping[str, Any] | None, old_spec: Mapping[str, Any] | None
) -> str | None:
    if _unchanged(operation, spec, old_spec):
        return None
    errors = worker_pool_errors(spec)
    return str(InvalidSpec(errors)) if errors else None


def worker_pool_errors(spec: Mapping[str, Any] | None) -> list[FieldError]:
    try:
        parse_worker_pool(spec)
    except InvalidSpec as error:
        return list(error.errors)
    return []


def worker_pool_warnings(
    spec: Mapping[str, Any] | None,
    old_spec: Mapping[str, Any] | None = None,
    pool_name: str = "",
    tasks: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """What is admitted but would not do what it says: kubectl prints these.

    `tasks`: the ScheduledTasks on this pool (on an update), so a narrowed
    allowedTasks names the ones it no longer allows.
    """
    spec = spec or {}
    warnings = []
    if "replicas" in spec and spec.get("autoscaling") is not None:
        warnings.append(
            "spec.replicas: ignored while spec.autoscaling is set; the autoscaler sets the "
            "replicas between spec.autoscaling.minReplicas and maxReplicas"
        )
    if old_spec is not None and tasks:
        warnings += _narrowed(spec, old_spec, pool_name, tasks)
    return warnings


_NAMED = 10  # tasks named in one warning; the rest are counted


def _narrowed(
    spec: Mapping[str, Any],
    old_spec: Mapping[str, Any],
    pool_name: str,
    tasks: Sequence[Mapping[str, Any]],
) -> list[str]:
    try:
        new, old = parse_worker_pool(spec), parse_worker_pool(old_spec)
    except InvalidSpec:
        return []
    if new.allowed == old.allowed:
        return []
    denied = sorted(
        str(body.get("metadata", {}).get("name", ""))
        for body in tasks
        if isinstance(name := (body.get("spec") or {}).get("task", {}).get("name"), str)
        and task_allowed(name, old.allowed)
        and not task_allowed(name, new.allowed)
    )
    if not denied:
        return []
    named = ", ".join(denied[:_NAMED])
    more = f" and {len(denied) - _NAMED} more" if len(denied) > _NAMED else ""
    return [
        f"spec.allowedTasks: no longer allows the task of ScheduledTasks {named}{more} on "
        f"WorkerPool {pool_name!r}; they stay Stalled (InvalidSpec) and run nothing until "
        "their task is allowed again or changed"
    ]


def scheduled_task_warnings(
    namespace: str,
    spec: Mapping[str, Any] | None,
    pools: PoolSpecs,
    registered: Mapping[tuple[str, str], Sequence[str]],
) -> list[str]:
    """A task the pool's globs allow but that none of its workers registers: every run
    would fail with TaskNotRegistered. Only when the pool's workers have said what they
    register (a pool that has never run a worker is not known either way)."""
    spec = spec or {}
    pool_name = str(spec.get("workerPool", ""))
    task = spec.get("task")
    name = task.get("name") if isinstance(task, Mapping) else None
    known = registered.get((namespace, pool_name)) or ()
    pool = _known_pool(pools, namespace, pool_name)
    if not known or pool is None or not isinstance(name, str) or name in known:
        return []
    if not task_allowed(name, pool.allowed):
        return []  # refused already
    return [
        f"spec.task.name: {name!r} is allowed by WorkerPool {pool_name!r} but none of its "
        "workers registers it (status.registeredTasks), so its runs would fail with "
        "TaskNotRegistered; check the name, or add the module that defines it to the "
        "pool's spec.taskModules"
    ]


def review_pool_scale(namespace: str, name: str, pools: PoolSpecs) -> str | None:
    """`kubectl scale` (the scale subresource) on an autoscaled pool is refused: the
    autoscaler would undo it at its next poll."""
    raw = pools.get((namespace, name))
    if raw is None or raw.get("autoscaling") is None:
        return None
    return (
        f"spec.replicas: WorkerPool {namespace}/{name} is autoscaled (spec.autoscaling), so "
        "kubectl scale cannot set its replicas; change spec.autoscaling.minReplicas (its "
        "floor) or maxReplicas, or remove spec.autoscaling to scale by hand"
    )
