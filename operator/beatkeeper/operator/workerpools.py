"""The WorkerPool planner: spec + observed state + now -> desired status.

Pure. The Deployment and autoscaling parts arrive with the pool's own issue;
this part validates the spec and reports health and the pool's queue.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from beatkeeper import contract
from beatkeeper.api.validation import InvalidSpec, parse_worker_pool
from beatkeeper.api.workerpool import WorkerPoolSpec
from beatkeeper.operator.conditions import Event, Health, find, health_conditions, parse_conditions


@dataclass(frozen=True)
class ObservedPool:
    namespace: str
    name: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ObservedPool:
        meta = body.get("metadata", {})
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            generation=int(meta.get("generation", 0)),
            spec=body.get("spec") or {},
            status=body.get("status") or {},
        )


@dataclass(frozen=True)
class PoolPlan:
    spec: WorkerPoolSpec | None
    health: Health
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)


def _stalled_event(observed: ObservedPool, health: Health) -> list[Event]:
    previous = find(parse_conditions(observed.status.get("conditions")), "Stalled")
    changed = observed.status.get("observedGeneration") != observed.generation
    if changed or previous is None or not previous.is_true:
        return [Event("Warning", health.reason, health.message)]
    return []


def plan_worker_pool(observed: ObservedPool, now: dt.datetime) -> PoolPlan:
    try:
        spec: WorkerPoolSpec | None = parse_worker_pool(observed.spec)
        health = Health.ready("Accepted", "the pool's spec is valid")
    except InvalidSpec as error:
        spec, health = None, Health.stalled("InvalidSpec", str(error))
    conditions = health_conditions(
        parse_conditions(observed.status.get("conditions")), health, observed.generation, now
    )
    status = {
        "observedGeneration": observed.generation,
        "conditions": [c.to_api() for c in conditions],
        "queue": contract.queue_name(observed.namespace, observed.name),
    }
    events = _stalled_event(observed, health) if health.state == "stalled" else []
    return PoolPlan(spec, health, status, events)
