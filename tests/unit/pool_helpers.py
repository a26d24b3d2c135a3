"""Shared by the unit tests of the pool planner (imported as a plain module by pytest)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from beatkeeper.api.validation import parse_worker_pool
from beatkeeper.operator.deployments import ObservedDeployment, PoolRef, build_worker_deployment


def observed_deployment(
    pool: PoolRef,
    spec: Mapping[str, Any],
    replicas: int,
    ready: int | None = None,
    owner: str | None = None,
) -> ObservedDeployment:
    """The pool's Deployment as the apiserver reports it, rolled out, `ready` pods ready."""
    body = build_worker_deployment(pool, parse_worker_pool(spec), replicas)
    body["metadata"].update(uid="d-1", generation=3)
    body["metadata"]["ownerReferences"][0]["uid"] = owner or pool.uid
    body["status"] = {
        "observedGeneration": 3,
        "replicas": replicas,
        "readyReplicas": replicas if ready is None else ready,
        "updatedReplicas": replicas,
    }
    return ObservedDeployment.from_body(body)
