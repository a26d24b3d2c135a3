"""What the operator holds while it runs: adapters, the clock, the reconcilers.

Built once at start-up and kept in kopf's memo. The reconcilers are the
handler layer: they gather what was observed, ask the planners, and apply the
plans through the adapters (Redis via `beatkeeper_core.redbeat` and the run-record
stream, Kubernetes via `kubeapi`). Everything here is synchronous; async code
calls it through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kopf
import redis
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from beatkeeper.api.base import FINALIZER
from beatkeeper.api.scheduledtask import CANCEL_ANNOTATION
from beatkeeper.api.validation import InvalidSpec, parse_scheduled_task, parse_worker_pool
from beatkeeper.api.workerpool import WorkerPoolSpec
from beatkeeper.operator import autoscaler, metrics, runstatus, scheduledtasks, webhook, workerpools
from beatkeeper.operator.backlog import BacklogProbe
from beatkeeper.operator.conditions import Event, Health, health_conditions, parse_conditions
from beatkeeper.operator.credentials import ROTATE_ANNOTATION, TenantCredentials, secret_name
from beatkeeper.operator.deployments import ObservedDeployment, TenantSecret, deployment_name
from beatkeeper.operator.kubeapi import KubeApi, api_client, namespace_terminating
from beatkeeper.operator.metrics import OperatorMetrics, PoolStatuses, StateCollector
from beatkeeper.operator.podhealth import ObservedPod
from beatkeeper.operator.runrecords import RunRecordStream
from beatkeeper.operator.settings import OperatorSettings
from beatkeeper.operator.trouble import TroubleBook
from beatkeeper.operator.webhook import AdmissionServer
from beatkeeper.pki import CertificateAuthority
from beatkeeper_core import broker, contract, keys, records
from beatkeeper_core.publish import publish_runs
from beatkeeper_core.redbeat import RedbeatStore
from beatkeeper_core.runs import RunRegistry

Clock = Callable[[], dt.datetime]
TASK_KIND, POOL_KIND = "ScheduledTask", "WorkerPool"
Pools = Mapping[tuple[str, str], Mapping[str, Any]]
logger = logging.getLogger(__name__)
_CERT_DIRS: list[Path] = []
_RUN_NOW_GUARD_SECONDS = 7 * 86400  # as long as the run's registry entry lives
# Plans after which the object's entry is left as it is (its state is not known).
_ENTRY_LEFT_ALONE = frozenset({"PlanningFailed", "EntryWriteFailed"})


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Admission:
    """The running admission server and, in local mode, the configurations it registered."""

    server: AdmissionServer
    kube: KubeApi
    registered: bool

    def stop(self) -> None:
        if self.registered:
            self.kube.delete_webhook_configurations(webhook.NAME)
        self.server.stop()


def start_admission(
    config: OperatorSettings, kube: KubeApi, known: webhook.Known
) -> Admission | None:
    """Serve admission reviews for the configured mode (None when off)."""
    if config.webhook == "off":
        return None
    if config.webhook == "service":
        assert config.webhook_cert_dir is not None, "BEATKEEPER_WEBHOOK_CERT_DIR is required"
        certfile, keyfile = config.webhook_cert_dir / "tls.crt", config.webhook_cert_dir / "tls.key"
        server = AdmissionServer(
            config.webhook_listen, config.webhook_port or 9443, certfile, keyfile, known
        )
        server.start()
        return Admission(server, kube, registered=False)
    # Local: the apiserver calls https://127.0.0.1:PORT with a CA made here.
    directory = Path(tempfile.mkdtemp(prefix="beatkeeper-webhook-"))
    _CERT_DIRS.append(directory)
    ca = CertificateAuthority.create(directory, "beatkeeper-webhook-ca")
    pair = ca.issue_serving(directory, "webhook", [config.webhook_listen, "localhost"])
    server = AdmissionServer(
        config.webhook_listen, config.webhook_port, pair.cert_path, pair.key_path, known
    )
    port = server.start()
    configs = webhook.build_configurations(f"https://{config.webhook_listen}:{port}", ca.cert_pem)
    kube.apply_webhook_configurations(*configs)
    return Admission(server, kube, registered=True)


def post_events(kube: KubeApi, body: Mapping[str, Any], events: Iterable[Event]) -> None:
    """Best effort: a lost event must not undo the status write it accompanies."""
    for event in events:
        try:
            kube.post_event(body, event.type, event.reason, event.message, event.annotations)
        except Exception:
            logger.exception("event %s not posted", event.reason)


def pool_spec(raw: Mapping[str, Any] | None) -> WorkerPoolSpec | None:
    if raw is None:
        return None
    try:
        return parse_worker_pool(raw)
    except InvalidSpec:
        return None


class RunControl:
    """What the operator does to runs in the workers' registry: run-now, cancel, deletion.

    Run-now: the token's slot is kept in Redis (first try wins), so every try
    publishes the same run id (`<object>@<slot>~now-<hash of the token>`, never a
    scheduled slot's id): a try that failed is tried again at the next reconcile,
    and one that was published already is dropped by the claim. Cancel fails the
    object's active runs with reason Cancelled. Deletion leaves a mark after
    which no run of an earlier slot starts.
    """

    def __init__(self, settings: OperatorSettings, client: redis.Redis) -> None:
        self.client = client
        self.app = broker.celery_app(settings.redis_url, settings.tls, main="beatkeeper-operator")
        self.registries = broker.Registries(client, tenancy=settings.tenancy.enabled)

    def registry(self, namespace: str) -> RunRegistry:
        """The run registry of the namespace's key space (the root one without tenancy)."""
        return self.registries.for_namespace(namespace)

    def run_now(
        self, plan: scheduledtasks.TaskPlan, uid: str, token: str, now: dt.datetime
    ) -> None:
        """Publish the token's run; raises redis.RedisError (the next reconcile retries)."""
        definition = plan.definition
        assert definition is not None
        guard = keys.run_now_key(uid, token)
        self.client.set(guard, contract.format_slot(now), nx=True, ex=_RUN_NOW_GUARD_SECONDS)
        stored = self.client.get(guard)
        slot = contract.parse_slot(_text(stored)) if stored else now.replace(microsecond=0)
        envelope = contract.RunEnvelope.for_slot(
            definition.namespace,
            definition.object_name,
            slot,
            definition.task,
            definition.policy,
            trigger="run-now",
            tag=contract.run_now_tag(token),
            token=token,
        )
        registry = self.registry(definition.namespace)
        publish_runs(self.app, [(envelope, definition.queue)], registry=registry, now=now)

    def cancel(self, object_key: str, token: str, now: dt.datetime) -> int:
        """Stop the object's runs in flight (Failed, Cancelled); returns how many."""
        found = []
        message = f"cancelled by {CANCEL_ANNOTATION}={token}"
        registry = self.registry(object_key.partition("/")[0])
        for run, stored, state in registry.active(object_key):
            if stored is None:
                continue
            # A retrying run's registry entry holds the next attempt, which never started.
            retrying = state == contract.RunState.RETRYING.value
            envelope = (
                stored.model_copy(update={"attempt": stored.attempt - 1}) if retrying else stored
            )
            found.append((run, records.failed(envelope, now, "Cancelled", message)))
        return len(registry.cancel(found))

    def mark_deleted(self, object_keys: Sequence[str], now: dt.datetime) -> None:
        for key in object_keys:
            self.registry(key.partition("/")[0]).mark_deleted(key, now)


@dataclass
class ScheduledTaskReconciler:
    kube: KubeApi
    store: RedbeatStore
    control: RunControl
    clock: Clock
    writers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="status")
    )
    troubles: TroubleBook = field(default_factory=TroubleBook)
    metrics: OperatorMetrics = field(default_factory=lambda: OperatorMetrics(CollectorRegistry()))

    def reconcile(self, body: Mapping[str, Any], pools: Pools) -> None:
        self.reconcile_many([body], pools)

    def reconcile_many(self, bodies: Sequence[Mapping[str, Any]], pools: Pools) -> None:
        """Level-triggered: entries and reconcile-owned status of these objects.

        An error confined to one object (its planner raises, its entry cannot
        be written, its status cannot) is that object's alone: it gets a
        condition saying so where it can, one Warning event, and a retry after a
        backoff, while every other object of the batch goes on.
        """
        with self.metrics.duration.labels(TASK_KIND).time():
            self._reconcile_many(bodies, pools)

    def _reconcile_many(self, bodies: Sequence[Mapping[str, Any]], pools: Pools) -> None:
        deleting = [body for body in bodies if body["metadata"].get("deletionTimestamp")]
        self._finalize(deleting)
        now = self.clock()
        work: list[tuple[Mapping[str, Any], scheduledtasks.ObservedTask, scheduledtasks.TaskPlan]]
        work = []
        for body in bodies:
            if body["metadata"].get("deletionTimestamp") or not self.troubles.due(_uid(body)):
                continue
            item = scheduledtasks.ObservedTask.from_body(body)
            try:
                self._ensure_finalizer(body)
                plan = self._plan(item, pools, now)
            except (ApiException, redis.RedisError) as error:
                self._failed(body, "ReconcileFailed", _describe(error))
                self.metrics.reconciles.labels(TASK_KIND, "error").inc()
                continue
            except Exception as error:  # a planner bug must not stop the others
                logger.exception("planning %s failed", item.key)
                plan = self._troubled(body, item, "PlanningFailed", _describe(error), now)
            work.append((body, item, plan))
        plans = self._apply_entries(work, now)
        jobs = [
            self.writers.submit(self._write_status, body, item, plan, now)
            for (body, item, _), plan in zip(work, plans, strict=True)
        ]
        for job in jobs:
            job.result()

    def _plan(
        self, item: scheduledtasks.ObservedTask, pools: Pools, now: dt.datetime
    ) -> scheduledtasks.TaskPlan:
        raw_pool = pools.get((item.namespace, str(item.spec.get("workerPool", ""))))
        return scheduledtasks.plan_scheduled_task(
            item, pool_spec(raw_pool), raw_pool is not None, now
        )

    def _apply_entries(
        self, work: Sequence[Any], now: dt.datetime
    ) -> list[scheduledtasks.TaskPlan]:
        plans = [plan for _, _, plan in work]
        try:
            self._write_entries([item for _, item, _ in work], plans, now)
        except redis.ConnectionError as error:  # Redis itself is away: every object waits
            logger.warning("redis unavailable: %s", error)
            why = f"the schedule could not be written to Redis: {error}"
            return [
                scheduledtasks.unarmed(item, plan, why, now)
                for (_, item, _), plan in zip(work, plans, strict=True)
            ]
        except redis.RedisError:
            return [self._write_entry_alone(body, item, plan, now) for body, item, plan in work]
        return plans

    def _write_entries(
        self,
        observed: Sequence[scheduledtasks.ObservedTask],
        plans: Sequence[scheduledtasks.TaskPlan],
        now: dt.datetime,
    ) -> None:
        wanted = [plan.definition for plan in plans if plan.definition is not None]
        unwanted = [
            item.key
            for item, plan in zip(observed, plans, strict=True)
            if plan.definition is None and plan.health.reason not in _ENTRY_LEFT_ALONE
        ]
        self.store.upsert_if_changed(wanted, now)
        self.store.delete(unwanted)

    def _write_entry_alone(
        self,
        body: Mapping[str, Any],
        item: scheduledtasks.ObservedTask,
        plan: scheduledtasks.TaskPlan,
        now: dt.datetime,
    ) -> scheduledtasks.TaskPlan:
        """After a batch write failed: this object's entry on its own, to find who fails."""
        try:
            self._write_entries([item], [plan], now)
        except redis.RedisError as error:
            message = f"its redbeat entry cannot be written: {_describe(error)}"
            return self._troubled(body, item, "EntryWriteFailed", message, now)
        return plan

    def _troubled(
        self,
        body: Mapping[str, Any],
        item: scheduledtasks.ObservedTask,
        reason: str,
        message: str,
        now: dt.datetime,
    ) -> scheduledtasks.TaskPlan:
        self._failed(body, reason, message)
        return scheduledtasks.troubled(item, reason, message, now)

    def _failed(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        self.metrics.errors.labels(TASK_KIND, reason).inc()
        trouble = self.troubles.failed(_uid(body), reason, message)
        logger.warning("%s of %s: %s (retry in %d s)", reason, _key(body), message,
                       max(0, int(trouble.retry_at - time.monotonic())))  # fmt: skip
        if trouble.announce:
            post_events(self.kube, body, [Event("Warning", reason, message)])

    def _write_status(
        self,
        body: Mapping[str, Any],
        item: scheduledtasks.ObservedTask,
        plan: scheduledtasks.TaskPlan,
        now: dt.datetime,
    ) -> None:
        desired = dict(plan.status)
        events = [*self._run_now(body, item, plan, desired, now), *self._cancel(item, desired, now)]
        changes = scheduledtasks.status_changes(item.status, desired, now)
        try:
            written = not changes or self.kube.patch_status(
                "scheduledtasks", item.namespace, item.name, changes
            )
        except Exception as error:  # refused for this object alone (a policy, a bad value)
            self._failed(body, "StatusWriteFailed", f"status not written: {_describe(error)}")
            self.metrics.reconciles.labels(TASK_KIND, "error").inc()
            return
        if changes and written:
            post_events(self.kube, body, [*plan.events, *events])
        if plan.health.reason not in _ENTRY_LEFT_ALONE:
            self.troubles.cleared(_uid(body))
        result = "error" if plan.health.reason in _ENTRY_LEFT_ALONE else "ok"
        self.metrics.reconciles.labels(TASK_KIND, result).inc()

    def _run_now(
        self,
        body: Mapping[str, Any],
        item: scheduledtasks.ObservedTask,
        plan: scheduledtasks.TaskPlan,
        desired: dict[str, Any],
        now: dt.datetime,
    ) -> list[Event]:
        token = item.run_now_token
        if not token or token == item.status.get("runNowToken") or plan.definition is None:
            return []
        uid = str(body.get("metadata", {}).get("uid", item.key))
        try:
            self.control.run_now(plan, uid, token, now)
        except redis.RedisError as error:
            # Not recorded as acted on: the next reconcile publishes the same run id.
            logger.warning("run-now of %s not published yet: %s", item.key, error)
            return []
        desired["runNowToken"] = token
        self.metrics.run_now.inc()
        return [Event("Normal", "RunNow", f"run requested by token {token}")]

    def _cancel(
        self, item: scheduledtasks.ObservedTask, desired: dict[str, Any], now: dt.datetime
    ) -> list[Event]:
        token = item.cancel_token
        if not token or token == item.status.get("cancelToken"):
            return []
        try:
            stopped = self.control.cancel(item.key, token, now)
        except redis.RedisError as error:
            logger.warning("cancel of %s not done yet: %s", item.key, error)
            return []
        desired["cancelToken"] = token
        return [Event("Normal", "Cancelled", f"token {token}: {stopped} active runs stopped")]

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone (no finalizer): its entry goes, and none of its runs start."""
        key = contract.object_key(namespace, name)
        self.control.mark_deleted([key], self.clock())
        self.store.delete([key])

    def _finalize(self, bodies: Sequence[Mapping[str, Any]]) -> None:
        """The entry goes before the object does: delete it, then release the object."""
        mine = [b for b in bodies if FINALIZER in (b["metadata"].get("finalizers") or [])]
        if not mine:
            return
        keys_ = [
            contract.object_key(b["metadata"]["namespace"], b["metadata"]["name"]) for b in mine
        ]
        # The mark first: queued runs and waiting retries of the object never start.
        self.control.mark_deleted(keys_, self.clock())
        self.store.delete(keys_)
        for body in mine:
            meta = body["metadata"]
            try:
                self.kube.remove_finalizer(
                    "scheduledtasks", meta["namespace"], meta["name"], FINALIZER
                )
            except ApiException as error:
                self._failed(body, "FinalizerFailed", _describe(error))

    def _ensure_finalizer(self, body: Mapping[str, Any]) -> None:
        # Normally the mutating webhook added it at creation.
        meta = body["metadata"]
        if FINALIZER not in (meta.get("finalizers") or []):
            self.kube.add_finalizer("scheduledtasks", meta["namespace"], meta["name"], FINALIZER)


@dataclass
class RunStatusWriter:
    """Folds run records into status; the only writer of the run-owned fields."""

    kube: KubeApi
    clock: Clock
    views: dict[str, runstatus.RunView] = field(default_factory=dict)  # by object uid
    troubles: TroubleBook = field(default_factory=TroubleBook)  # objects refusing records
    metrics: OperatorMetrics = field(default_factory=lambda: OperatorMetrics(CollectorRegistry()))

    def apply(self, body: Mapping[str, Any], records: Sequence[contract.RunRecord]) -> None:
        meta = body["metadata"]
        uid = str(meta.get("uid", ""))
        view = self.views.get(uid) or runstatus.RunView.from_status(body.get("status") or {})
        events = runstatus.fold(view, records, self._history_limit(body))
        patch = runstatus.render(view)
        try:
            written = self.kube.patch_status(
                "scheduledtasks", meta["namespace"], meta["name"], patch
            )
        except Exception:
            self.views.pop(uid, None)  # rebuild from the stored status next time
            raise
        if written:
            self.views[uid] = view
            self.metrics.records_applied.inc(len(records))
            post_events(self.kube, body, events)

    @staticmethod
    def _history_limit(body: Mapping[str, Any]) -> int:
        try:
            return parse_scheduled_task(body.get("spec")).history_limit
        except InvalidSpec:
            return 5

    def forget(self, uid: str) -> None:
        self.views.pop(uid, None)


@dataclass
class PoolMemory:
    """What the operator keeps per pool between polls (rebuilt after a restart)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    scaler: autoscaler.ScalerState = field(default_factory=autoscaler.ScalerState)
    slots: workerpools.NextSlots = field(default_factory=workerpools.NextSlots)
    written: ObservedDeployment | None = None  # the Deployment as our last write returned it
    status: dict[str, Any] = field(default_factory=dict)  # every status field we wrote


@dataclass
class WorkerPoolReconciler:
    """Owns each pool's Deployment: observe, plan (the autoscaler included), converge, status.

    The pool's daemon calls it every pollSeconds and the event handler on spec
    changes; a lock per pool serializes the two. Returns the next poll interval.
    """

    kube: KubeApi
    clock: Clock
    probe: BacklogProbe | None = None
    credentials: TenantCredentials | None = None  # Redis tenancy on
    memory: dict[str, PoolMemory] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)
    troubles: TroubleBook = field(default_factory=TroubleBook)
    metrics: OperatorMetrics = field(default_factory=lambda: OperatorMetrics(CollectorRegistry()))
    statuses: PoolStatuses = field(default_factory=PoolStatuses)  # for the scrape

    def reconcile(
        self,
        body: Mapping[str, Any],
        slots: Iterable[Mapping[str, Any]] = (),
        deployments: Mapping[tuple[str, str], ObservedDeployment] | None = None,
        pods: Iterable[ObservedPod] = (),
    ) -> float:
        """`slots`: `workerpools.slot_source` of the pool's tasks; `deployments`: the index;
        `pods`: the pool's pods (from the pod index).

        An error of this pool alone (its planner raises, its status or Deployment
        is refused) is reported on the pool (a Stalled condition where its status
        can be written, one Warning event) and retried after a backoff; the
        returned interval is then the backoff.
        """
        uid = _uid(body)
        try:
            with self.metrics.duration.labels(POOL_KIND).time():
                interval = self._reconcile(body, slots, deployments, pods)
        except kopf.TemporaryError:
            raise
        except (ApiException, redis.RedisError) as error:
            return self._failed(body, "ReconcileFailed", _describe(error))
        except Exception as error:
            logger.exception("reconciling WorkerPool %s failed", _key(body))
            return self._failed(body, "PlanningFailed", _describe(error))
        self.troubles.cleared(uid)
        self.metrics.reconciles.labels(POOL_KIND, "ok").inc()
        return interval

    def _failed(self, body: Mapping[str, Any], reason: str, message: str) -> float:
        self.metrics.errors.labels(POOL_KIND, reason).inc()
        self.metrics.reconciles.labels(POOL_KIND, "error").inc()
        trouble = self.troubles.failed(_uid(body), reason, message)
        if trouble.announce:
            post_events(self.kube, body, [Event("Warning", reason, message)])
            observed = workerpools.ObservedPool.from_body(body)
            health = Health.stalled(reason, message)
            conditions = health_conditions(
                parse_conditions(observed.status.get("conditions")),
                health,
                observed.generation,
                self.clock(),
            )
            with contextlib.suppress(Exception):  # the status may be what refuses
                self.kube.patch_status(
                    "workerpools",
                    observed.namespace,
                    observed.name,
                    {"conditions": [c.to_api() for c in conditions]},
                )
        return max(trouble.retry_at - time.monotonic(), 1.0)

    def _reconcile(
        self,
        body: Mapping[str, Any],
        slots: Iterable[Mapping[str, Any]],
        deployments: Mapping[tuple[str, str], ObservedDeployment] | None,
        pods: Iterable[ObservedPod],
    ) -> float:
        observed = workerpools.ObservedPool.from_body(body)
        memory = self._memory(observed.uid)
        with memory.lock:
            # The operator is the only writer of pool status, and the body may
            # predate its last write (the watch event of it is still on the way).
            observed = replace(observed, status={**observed.status, **memory.status})
            now = self.clock()
            world = self._observe(observed, memory, slots, deployments, now)
            world = replace(world, pods=tuple(pods))
            plan = workerpools.plan_worker_pool(observed, now, world)
            try:
                plan = self._converge(observed, memory, world, plan, now)
            except ApiException as error:
                if namespace_terminating(error):  # the pool goes with it: nothing to do
                    raise kopf.TemporaryError("the namespace is being deleted", delay=5) from None
                raise
            memory.scaler = plan.scaler
            changes = scheduledtasks.status_changes(observed.status, plan.status, now)
            if not changes or self.kube.patch_status(
                "workerpools", observed.namespace, observed.name, changes
            ):
                memory.status.update(changes)
                post_events(self.kube, body, plan.events)
                self._count(observed, world, plan)
        return plan.poll_seconds

    def _count(
        self,
        observed: workerpools.ObservedPool,
        world: workerpools.PoolWorld,
        plan: workerpools.PoolPlan,
    ) -> None:
        key = (observed.namespace, observed.name)
        policy = plan.spec.autoscaling if plan.spec else None
        bounds = (
            {"minReplicas": policy.min_replicas, "maxReplicas": policy.max_replicas}
            if policy
            else {}
        )
        self.statuses.update(key, {**plan.status, **bounds})
        current = world.deployment.replicas if world.deployment else 0
        wanted = int(plan.status.get("desiredReplicas", current))
        if wanted != current:
            direction = "up" if wanted > current else "down"
            self.metrics.scale_events.labels(*key, direction).inc()

    def release_credential(self, namespace: str, uid: str) -> None:
        """The pool is gone: its Redis password too (Redis tenancy); a failure here is
        collected by the resync later."""
        if self.credentials is None:
            return
        try:
            self.credentials.release(namespace, uid)
        except redis.RedisError as error:
            logger.warning("the Redis password of a deleted pool stays for now: %s", error)

    def forget(self, uid: str, key: tuple[str, str] | None = None) -> None:
        with self.guard:
            self.memory.pop(uid, None)
        if key is not None:
            self.statuses.forget(key)

    def _memory(self, uid: str) -> PoolMemory:
        with self.guard:
            return self.memory.setdefault(uid, PoolMemory())

    def _observe(
        self,
        observed: workerpools.ObservedPool,
        memory: PoolMemory,
        slots: Iterable[Mapping[str, Any]],
        deployments: Mapping[tuple[str, str], ObservedDeployment] | None,
        now: dt.datetime,
    ) -> workerpools.PoolWorld:
        sample, error, registered = None, "", None
        tenant, space = None, keys.ROOT
        if self.credentials is not None:
            # Raises: a pool whose credential cannot be provisioned cannot work.
            token = observed.annotations.get(ROTATE_ANNOTATION, "")
            generation = self.credentials.ensure(observed.ref, token)
            tenant = TenantSecret(secret_name(observed.name), generation, observed.namespace)
            space = keys.key_space(observed.namespace)
        if self.probe is not None:
            queue = contract.queue_name(observed.namespace, observed.name)
            try:
                sample = self.probe.measure(queue, now, space)
                registered = self.probe.registered(queue, space)
            except redis.RedisError as failure:
                error = str(failure)
        return workerpools.PoolWorld(
            deployment=self._deployment(observed, memory, deployments),
            backlog=sample,
            backlog_error=error,
            registered=registered,
            upcoming=memory.slots.earliest(slots, now),
            scaler=memory.scaler,
            tenant=tenant,
        )

    def _deployment(
        self,
        observed: workerpools.ObservedPool,
        memory: PoolMemory,
        deployments: Mapping[tuple[str, str], ObservedDeployment] | None,
    ) -> ObservedDeployment | None:
        name = deployment_name(observed.name)
        if deployments is None:
            found = self.kube.get_deployment(observed.namespace, name)
            return ObservedDeployment.from_body(found) if found else None
        indexed = deployments.get((observed.namespace, name))
        written = memory.written
        # The index follows a watch: just after a write it may still hold the older object.
        if (
            indexed is not None
            and written is not None
            and (written.uid, written.name) == (indexed.uid, indexed.name)
            and written.generation > indexed.generation
        ):
            return written
        return indexed

    def _converge(
        self,
        observed: workerpools.ObservedPool,
        memory: PoolMemory,
        world: workerpools.PoolWorld,
        plan: workerpools.PoolPlan,
        now: dt.datetime,
    ) -> workerpools.PoolPlan:
        if plan.action == "create" and plan.deployment is not None:
            created = self.kube.create_deployment(observed.namespace, plan.deployment)
            if created is not None:
                memory.written = ObservedDeployment.from_body(created)
                return plan
            # One of that name exists (not in the index: not ours, or not labelled): look.
            found = self.kube.get_deployment(
                observed.namespace, plan.deployment["metadata"]["name"]
            )
            seen = ObservedDeployment.from_body(found) if found else None
            plan = workerpools.plan_worker_pool(observed, now, replace(world, deployment=seen))
            if plan.action == "create":
                raise kopf.TemporaryError("the Deployment vanished while it was created", delay=1)
        if plan.action == "apply" and plan.deployment is not None:
            applied = self.kube.apply_deployment(observed.namespace, plan.deployment)
            memory.written = ObservedDeployment.from_body(applied)
        return plan


@dataclass
class Runtime:
    settings: OperatorSettings
    kube: KubeApi
    redis: redis.Redis
    store: RedbeatStore
    records: RunRecordStream
    clock: Clock
    scheduled_tasks: ScheduledTaskReconciler
    run_status: RunStatusWriter
    worker_pools: WorkerPoolReconciler
    backlog: BacklogProbe
    metrics: OperatorMetrics = field(default_factory=lambda: OperatorMetrics(CollectorRegistry()))
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        for directory in _CERT_DIRS:
            shutil.rmtree(directory, ignore_errors=True)


def redis_client(settings: OperatorSettings) -> redis.Redis:
    """The operator's Redis client: its URL, with the TLS settings the chart passes
    (BEATKEEPER_BROKER_TLS_*) for a rediss:// URL."""
    return broker.redis_client(settings.redis_url, settings.tls, timeout=10)


def build_runtime(
    settings: OperatorSettings,
    clock: Clock = utc_now,
    namespaces: Callable[[], Iterable[str]] | None = None,
) -> Runtime:
    """`namespaces`: those with pools or tasks (from the indexes), whose run-record
    streams the operator reads under Redis tenancy."""
    kube = KubeApi(api_client())
    client = redis_client(settings)
    store = RedbeatStore(client, settings.redbeat_prefix)
    tenancy = settings.tenancy
    records = RunRecordStream(client, namespaces if tenancy.enabled else None)
    control = RunControl(settings, client)
    credentials = (
        TenantCredentials(client, kube, tenancy, settings.redis_url) if tenancy.enabled else None
    )
    backoff = settings.object_backoff_seconds
    probe = BacklogProbe(client, control.app)
    counted = OperatorMetrics(CollectorRegistry())
    return Runtime(
        settings=settings,
        kube=kube,
        redis=client,
        store=store,
        records=records,
        clock=clock,
        scheduled_tasks=ScheduledTaskReconciler(
            kube, store, control, clock, troubles=TroubleBook(base=backoff), metrics=counted
        ),
        run_status=RunStatusWriter(
            kube, clock, troubles=TroubleBook(base=backoff), metrics=counted
        ),
        worker_pools=WorkerPoolReconciler(
            kube,
            clock,
            probe,
            credentials=credentials,
            troubles=TroubleBook(base=backoff),
            metrics=counted,
        ),
        backlog=probe,
        metrics=counted,
        closers=[kube.client.close, client.close, probe.close],
    )


def serve_metrics(
    runtime: Runtime, tasks: Mapping[Any, Mapping[str, Any]], settings: OperatorSettings
) -> Any:
    """/metrics on `settings.metrics_port`: the counters, and the objects' state per scrape."""
    registry = runtime.metrics.registry
    registry.register(
        StateCollector(
            tasks=lambda: tasks,
            pools=runtime.worker_pools.statuses.snapshot,
            armed=runtime.store.armed,
            records=runtime.records.progress,
        )
    )
    return metrics.serve(registry, settings.metrics_port, settings.metrics_listen)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _uid(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or _key(body))


def _key(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return contract.object_key(str(meta.get("namespace")), str(meta.get("name")))


def _describe(error: BaseException) -> str:
    """A short, single-line account of an error (an ApiException's reason and message)."""
    if isinstance(error, ApiException):
        detail = error.reason or ""
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            detail = json.loads(error.body or "{}").get("message") or detail
        return f"{error.status} {detail}"[:500]
    return f"{type(error).__name__}: {error}"[:500]
