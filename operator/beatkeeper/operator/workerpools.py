"""The WorkerPool planner: spec + observed Deployment + backlog + now -> desired state.

Pure. The reconciler (`runtime.WorkerPoolReconciler`) hands in the pool as the
apiserver has it and a `PoolWorld`: the pool's Deployment (None when there is
none), a backlog sample (None when Redis could not be read), the next slot of a
ScheduledTask that targets the pool, and the autoscaler's memory. The plan says
whether to create or apply the Deployment, and carries the whole status, the
events and the autoscaler's new memory. The order is sample-controller's: a
Deployment of that name that the pool does not own is left alone (Stalled,
a Warning event once), otherwise it is converged and status is rebuilt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from beatkeeper.api.base import Condition
from beatkeeper.api.validation import InvalidSpec, parse_scheduled_task, parse_worker_pool
from beatkeeper.api.workerpool import WorkerPoolSpec
from beatkeeper.operator import autoscaler
from beatkeeper.operator.autoscaler import BacklogSample, ScalerState, Upcoming
from beatkeeper.operator.conditions import (
    Event,
    Health,
    condition,
    find,
    health_conditions,
    parse_conditions,
)
from beatkeeper.operator.deployments import (
    SPEC_HASH_ANNOTATION,
    ObservedDeployment,
    PoolRef,
    TenantSecret,
    broker_secret,
    build_worker_deployment,
    selector,
)
from beatkeeper.operator.podhealth import ObservedPod, diagnose
from beatkeeper.operator.scheduledtasks import schedule_spec
from beatkeeper_core import contract, schedules

MANUAL_POLL_SECONDS = 1.0  # without autoscaling, status still follows the Deployment
STALLED_POLL_SECONDS = 5.0
Action = Literal["create", "apply", "none"]


@dataclass(frozen=True)
class ObservedPool:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ObservedPool:
        meta = body.get("metadata", {})
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation", 0)),
            spec=body.get("spec") or {},
            status=body.get("status") or {},
            annotations=dict(meta.get("annotations") or {}),
        )

    @property
    def ref(self) -> PoolRef:
        return PoolRef(self.namespace, self.name, self.uid)


@dataclass(frozen=True)
class PoolWorld:
    """What the reconciler observed besides the pool itself."""

    deployment: ObservedDeployment | None = None
    backlog: BacklogSample | None = None
    backlog_error: str = ""
    upcoming: Upcoming | None = None
    scaler: ScalerState = field(default_factory=ScalerState)
    pods: tuple[ObservedPod, ...] = ()  # the pool's pods as the kubelet reports them
    registered: tuple[str, ...] | None = None  # task names its workers announced; None: unknown
    tenant: TenantSecret | None = None  # Redis tenancy: the pool's own credential Secret


@dataclass(frozen=True)
class PoolPlan:
    spec: WorkerPoolSpec | None
    health: Health
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    action: Action = "none"
    deployment: dict[str, Any] | None = None  # the desired Deployment (None: leave it)
    scaler: ScalerState = field(default_factory=ScalerState)
    poll_seconds: float = STALLED_POLL_SECONDS


@dataclass(frozen=True)
class Scaling:
    replicas: int
    backlog: int | None
    active: int | None
    reason: str
    limit: autoscaler.Limit | None = None
    scaler: ScalerState = field(default_factory=ScalerState)


def _stalled_event(observed: ObservedPool, health: Health) -> list[Event]:
    previous = find(parse_conditions(observed.status.get("conditions")), "Stalled")
    changed = observed.status.get("observedGeneration") != observed.generation
    if changed or previous is None or not previous.is_true or previous.reason != health.reason:
        return [Event("Warning", health.reason, health.message)]
    return []


def _stalled(observed: ObservedPool, health: Health, now: dt.datetime) -> PoolPlan:
    conditions = health_conditions(
        parse_conditions(observed.status.get("conditions")), health, observed.generation, now
    )
    status = {
        "observedGeneration": observed.generation,
        "conditions": [c.to_api() for c in conditions],
        "queue": contract.queue_name(observed.namespace, observed.name),
    }
    return PoolPlan(None, health, status, _stalled_event(observed, health))


def _scaling(
    spec: WorkerPoolSpec, world: PoolWorld, current: int, pods: int, now: dt.datetime
) -> Scaling:
    sample = world.backlog
    policy = spec.autoscaling
    if policy is None:
        backlog = (
            autoscaler.measure(sample, pods, spec.concurrency, spec.prefetch) if sample else None
        )
        reason = f"spec.replicas {current} -> {spec.replicas}"
        return Scaling(spec.replicas, backlog, sample.active if sample else None, reason)
    if sample is None:  # keep what runs, within the bounds, until Redis answers again
        kept = min(max(current, policy.min_replicas), policy.max_replicas)
        return Scaling(kept, None, None, f"bounds [{policy.min_replicas}, {policy.max_replicas}]")
    decision = autoscaler.decide(
        policy,
        concurrency=spec.concurrency,
        prefetch=spec.prefetch,
        sample=sample,
        current=current,
        pods=pods,
        upcoming=world.upcoming,
        state=world.scaler,
        now=now,
    )
    return Scaling(
        decision.replicas,
        decision.backlog,
        decision.active,
        decision.reason,
        decision.limit,
        decision.state,
    )


def _action(dep: ObservedDeployment | None, manifest: Mapping[str, Any], replicas: int) -> Action:
    if dep is None:
        return "create"
    wanted = manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    return "apply" if dep.spec_hash != wanted or dep.replicas != replicas else "none"


def _replicas(dep: ObservedDeployment, replicas: int) -> str:
    """Where the Deployment is on its way to `replicas`, in words (never "4/3 ready")."""
    if dep.status_replicas > replicas:
        return (
            f"scaling down to {replicas}: {dep.status_replicas} replicas still running, "
            f"{dep.ready_replicas} ready"
        )
    if replicas == dep.ready_replicas:
        return f"{replicas} of {replicas} replicas ready"
    return f"scaling up to {replicas}: {dep.ready_replicas} of {replicas} replicas ready"


def _health(
    spec: WorkerPoolSpec, dep: ObservedDeployment | None, manifest: Mapping[str, Any], replicas: int
) -> Health:
    """Ready while the pool serves: a routine scale step of an autoscaled pool keeps it
    Ready (reason Scaling) as long as its floor (minReplicas) is ready; a change of the
    pod template, a manual replica change or a floor not yet reached is Reconciling."""
    name = manifest["metadata"]["name"]
    if dep is None:
        return Health.reconciling("Creating", f"creating Deployment {name}")
    if dep.spec_hash != manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION]:
        return Health.reconciling(
            "Updating", f"applying the new pod template; {_replicas(dep, replicas)}"
        )
    if dep.updated_replicas < dep.status_replicas or (
        spec.autoscaling is None and not dep.rolled_out
    ):
        return Health.reconciling(
            "RollingOut", f"Deployment {name} is rolling out; {_replicas(dep, replicas)}"
        )
    return _replica_health(spec, dep, replicas)


def _replica_health(spec: WorkerPoolSpec, dep: ObservedDeployment, replicas: int) -> Health:
    steady = replicas == dep.replicas and dep.status_replicas == dep.ready_replicas == replicas
    if not steady:
        floor = spec.autoscaling.min_replicas if spec.autoscaling else None
        if floor is not None and dep.ready_replicas >= min(floor, replicas):
            return Health.ready("Scaling", _replicas(dep, replicas))
        return Health.reconciling("Scaling", _replicas(dep, replicas))
    if replicas == 0:
        why = "until work arrives" if spec.autoscaling else "as spec.replicas says"
        return Health.ready("ScaledToZero", f"no replicas {why}")
    return Health.ready("ReplicasReady", _replicas(dep, replicas))


def _deadline(observed: ObservedPool, dep: ObservedDeployment | None) -> Health | None:
    """The Deployment controller gave up on the rollout (progressDeadlineSeconds)."""
    if dep is None or not dep.progress_failed:
        return None
    return Health.stalled(
        "ProgressDeadlineExceeded",
        f"Deployment {dep.name}: {dep.progress_failed}; see why: kubectl describe pods -n "
        f"{observed.namespace} -l {selector(observed.name)}",
    )


def _limited(observed: ObservedPool, scaling: Scaling, now: dt.datetime) -> list[Condition]:
    if scaling.limit is None:
        return []
    previous = find(parse_conditions(observed.status.get("conditions")), "ScalingLimited")
    limit = scaling.limit
    return [
        condition(
            previous,
            kind="ScalingLimited",
            status="True" if limit.limited else "False",
            reason=limit.reason,
            message=limit.message,
            generation=observed.generation,
            now=now,
        )
    ]


def _status(
    observed: ObservedPool,
    *,
    dep: ObservedDeployment | None,
    scaling: Scaling,
    current: int,
    conditions: list[Condition],
    now: dt.datetime,
    registered: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    scaled = scaling.replicas != current
    previous = observed.status
    return {
        "observedGeneration": observed.generation,
        "conditions": [c.to_api() for c in conditions],
        "queue": contract.queue_name(observed.namespace, observed.name),
        "replicas": dep.status_replicas if dep else 0,
        "readyReplicas": dep.ready_replicas if dep else 0,
        "desiredReplicas": scaling.replicas,
        "backlog": previous.get("backlog", 0) if scaling.backlog is None else scaling.backlog,
        "active": previous.get("active", 0) if scaling.active is None else scaling.active,
        "lastScaleTime": contract.format_time(now) if scaled else previous.get("lastScaleTime"),
        "selector": selector(observed.name),
        "registeredTasks": (
            previous.get("registeredTasks") if registered is None else list(registered)
        ),
    }


def plan_worker_pool(
    observed: ObservedPool, now: dt.datetime, world: PoolWorld | None = None
) -> PoolPlan:
    world = world or PoolWorld()
    try:
        spec = parse_worker_pool(observed.spec)
    except InvalidSpec as error:
        return _stalled(observed, Health.stalled("InvalidSpec", str(error)), now)
    dep = world.deployment
    if dep is not None and not dep.owned_by(observed.uid):
        why = (
            f"Deployment {dep.name} exists and is not owned by this WorkerPool; it is left "
            "alone: delete or rename it, or give the pool another name"
        )
        return _stalled(observed, Health.stalled("DeploymentConflict", why), now)
    current = dep.replicas if dep else 0
    scaling = _scaling(spec, world, current, dep.status_replicas if dep else 0, now)
    manifest = build_worker_deployment(observed.ref, spec, scaling.replicas, world.tenant)
    action = _action(dep, manifest, scaling.replicas)
    health = _health(spec, dep, manifest, scaling.replicas)
    if spec.autoscaling is not None and world.backlog is None:
        why = world.backlog_error or "no sample yet"
        health = Health.reconciling("BacklogUnknown", f"the backlog cannot be read: {why}")
    secret, key = broker_secret(spec, world.tenant)
    trouble = diagnose(observed.namespace, world.pods, secret, key)
    events: list[Event] = []
    stuck = Health.stalled(trouble.reason, trouble.message) if trouble else _deadline(observed, dep)
    if stuck is not None:  # the Deployment still converges: a fix is picked up at once
        health = stuck
        events += _stalled_event(observed, health)
    conditions = health_conditions(
        parse_conditions(observed.status.get("conditions")),
        health,
        observed.generation,
        now,
        extra=_limited(observed, scaling, now),
    )
    if scaling.replicas != current:
        events.append(Event("Normal", "Scaled", scaling.reason))
    return PoolPlan(
        spec=spec,
        health=health,
        status=_status(
            observed,
            dep=dep,
            scaling=scaling,
            current=current,
            conditions=conditions,
            now=now,
            registered=world.registered,
        ),
        events=events,
        action=action,
        deployment=manifest if action != "none" else None,
        scaler=scaling.scaler,
        poll_seconds=(spec.autoscaling.poll_seconds if spec.autoscaling else MANUAL_POLL_SECONDS),
    )


# Pre-warm: the next slot of the ScheduledTasks that target a pool.

SLOT_FIELDS = ("schedule", "every", "at", "timeZone", "suspend")


def slot_source(
    namespace: str, name: str, meta: Mapping[str, Any], spec: Mapping[str, Any]
) -> dict[str, Any]:
    """The little of a ScheduledTask that fixes its slots (an index value, kept small)."""
    task = spec.get("task")
    return {
        "key": contract.object_key(namespace, name),
        "uid": str(meta.get("uid", "")),
        "generation": int(meta.get("generation") or 0),
        "created": meta.get("creationTimestamp"),
        "spec": {
            **{key: spec[key] for key in SLOT_FIELDS if key in spec},
            "workerPool": spec.get("workerPool"),
            "task": {"name": task.get("name")} if isinstance(task, Mapping) else task,
        },
    }


def _schedule(source: Mapping[str, Any]) -> schedules.Schedule | None:
    try:
        spec = parse_scheduled_task(source["spec"])
        created = contract.parse_time(source["created"])
    except (InvalidSpec, ValueError):
        return None
    return None if spec.suspend else schedule_spec(spec, created).build()


@dataclass
class _Slot:
    generation: int
    schedule: schedules.Schedule | None
    next: dt.datetime | None = None


@dataclass
class NextSlots:
    """The earliest upcoming slot among one pool's ScheduledTasks.

    Schedules are parsed once per object generation and each next slot is
    computed once, when the previous one passes; a poll costs a dict lookup
    per task. Objects no longer listed are forgotten.
    """

    cache: dict[str, _Slot] = field(default_factory=dict)

    def earliest(self, sources: Iterable[Mapping[str, Any]], now: dt.datetime) -> Upcoming | None:
        best: Upcoming | None = None
        seen: dict[str, _Slot] = {}
        for source in sources:
            slot = self._slot(source, now)
            seen[source["uid"]] = slot
            if slot.next is not None and (best is None or slot.next < best.at):
                best = Upcoming(slot.next, source["key"])
        self.cache = seen
        return best

    def _slot(self, source: Mapping[str, Any], now: dt.datetime) -> _Slot:
        slot = self.cache.get(source["uid"])
        if slot is None or slot.generation != source["generation"]:
            slot = _Slot(source["generation"], _schedule(source))
        if slot.schedule is not None and (slot.next is None or slot.next <= now):
            slot.next = slot.schedule.next_after(now)
        return slot
