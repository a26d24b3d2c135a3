"""What the operator holds while it runs: adapters, the clock, the reconcilers.

Built once at start-up and kept in kopf's memo. The reconcilers are the
handler layer: they gather what was observed, ask the planners, and apply the
plans through the adapters (Redis via `beatkeeper.redbeat` and the run-record
stream, Kubernetes via `kubeapi`). Everything here is synchronous; async code
calls it through `asyncio.to_thread`.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import redis

from beatkeeper import contract
from beatkeeper.api.validation import InvalidSpec, parse_scheduled_task, parse_worker_pool
from beatkeeper.api.workerpool import WorkerPoolSpec
from beatkeeper.operator import runstatus, scheduledtasks, workerpools
from beatkeeper.operator.conditions import Event
from beatkeeper.operator.kubeapi import KubeApi, api_client
from beatkeeper.operator.runrecords import RunRecordStream
from beatkeeper.pki import CertificateAuthority
from beatkeeper.redbeat import RedbeatStore
from beatkeeper.settings import OperatorSettings, WorkerSettings

Clock = Callable[[], dt.datetime]
Pools = Mapping[tuple[str, str], Mapping[str, Any]]
logger = logging.getLogger(__name__)
_CERT_DIRS: list[Path] = []
_RUN_NOW_GUARD_SECONDS = 7 * 86400


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def webhook_server(config: OperatorSettings) -> kopf.WebhookServer | None:
    """The admission webhook server for the configured mode (None when off)."""
    if config.webhook == "off":
        return None
    if config.webhook == "service":
        assert config.webhook_cert_dir is not None, "BEATKEEPER_WEBHOOK_CERT_DIR is required"
        return kopf.WebhookServer(
            addr=config.webhook_listen,
            port=config.webhook_port or 9443,
            certfile=str(config.webhook_cert_dir / "tls.crt"),
            pkeyfile=str(config.webhook_cert_dir / "tls.key"),
        )
    # Local: the apiserver calls https://127.0.0.1:PORT with a CA made here.
    directory = Path(tempfile.mkdtemp(prefix="beatkeeper-webhook-"))
    _CERT_DIRS.append(directory)
    ca = CertificateAuthority.create(directory, "beatkeeper-webhook-ca")
    pair = ca.issue_serving(directory, "webhook", [config.webhook_listen, "localhost"])
    return kopf.WebhookServer(
        addr=config.webhook_listen,
        port=config.webhook_port or None,
        host=config.webhook_listen,
        certfile=str(pair.cert_path),
        pkeyfile=str(pair.key_path),
        cafile=str(ca.pair.cert_path),
    )


def post_events(kube: KubeApi, body: Mapping[str, Any], events: Iterable[Event]) -> None:
    """Best effort: a lost event must not undo the status write it accompanies."""
    for event in events:
        try:
            kube.post_event(body, event.type, event.reason, event.message)
        except Exception:
            logger.exception("event %s not posted", event.reason)


def pool_spec(raw: Mapping[str, Any] | None) -> WorkerPoolSpec | None:
    if raw is None:
        return None
    try:
        return parse_worker_pool(raw)
    except InvalidSpec:
        return None


class RunPublisher:
    """Publishes run-now runs through the worker package's publisher."""

    def __init__(self, settings: OperatorSettings, client: redis.Redis) -> None:
        from beatkeeper_worker.app import create_app

        self.client = client
        self.app = create_app(
            WorkerSettings(broker_url=settings.redis_url), main="beatkeeper-operator"
        )

    def run_now(
        self, plan: scheduledtasks.TaskPlan, uid: str, token: str, now: dt.datetime
    ) -> bool:
        """Publish one run for this token unless one was published before; True if so."""
        from beatkeeper_worker.publish import publish_run

        definition = plan.definition
        assert definition is not None
        guard = f"beatkeeper:run-now:{uid}:{token}"
        slot = now.replace(microsecond=0)
        if not self.client.set(
            guard, contract.format_slot(slot), nx=True, ex=_RUN_NOW_GUARD_SECONDS
        ):
            return False
        envelope = contract.RunEnvelope.for_slot(
            definition.namespace,
            definition.object_name,
            slot,
            definition.task,
            definition.policy,
            trigger="run-now",
        )
        publish_run(self.app, envelope, definition.queue, now=now)
        return True


@dataclass
class ScheduledTaskReconciler:
    kube: KubeApi
    store: RedbeatStore
    publisher: RunPublisher
    clock: Clock

    def reconcile(self, body: Mapping[str, Any], pools: Pools) -> None:
        self.reconcile_many([body], pools)

    def reconcile_many(self, bodies: Sequence[Mapping[str, Any]], pools: Pools) -> None:
        """Level-triggered: entries and reconcile-owned status of these objects."""
        now = self.clock()
        observed = [scheduledtasks.ObservedTask.from_body(body) for body in bodies]
        plans = [self._plan(item, pools, now) for item in observed]
        plans = self._apply_entries(observed, plans, now)
        for body, item, plan in zip(bodies, observed, plans, strict=True):
            self._write_status(body, item, plan, now)

    def _plan(
        self, item: scheduledtasks.ObservedTask, pools: Pools, now: dt.datetime
    ) -> scheduledtasks.TaskPlan:
        raw_pool = pools.get((item.namespace, str(item.spec.get("workerPool", ""))))
        return scheduledtasks.plan_scheduled_task(
            item, pool_spec(raw_pool), raw_pool is not None, now
        )

    def _apply_entries(
        self,
        observed: Sequence[scheduledtasks.ObservedTask],
        plans: list[scheduledtasks.TaskPlan],
        now: dt.datetime,
    ) -> list[scheduledtasks.TaskPlan]:
        wanted = [plan.definition for plan in plans if plan.definition is not None]
        unwanted = [
            item.key for item, plan in zip(observed, plans, strict=True) if plan.definition is None
        ]
        try:
            self.store.upsert_if_changed(wanted, now)
            self.store.delete(unwanted)
        except redis.RedisError as error:
            logger.warning("redis unavailable: %s", error)
            why = f"the schedule could not be written to Redis: {error}"
            return [
                scheduledtasks.unarmed(item, plan, why, now)
                for item, plan in zip(observed, plans, strict=True)
            ]
        return plans

    def _write_status(
        self,
        body: Mapping[str, Any],
        item: scheduledtasks.ObservedTask,
        plan: scheduledtasks.TaskPlan,
        now: dt.datetime,
    ) -> None:
        desired = dict(plan.status)
        token = item.run_now_token
        if token and token != item.status.get("runNowToken") and plan.definition is not None:
            uid = str(body.get("metadata", {}).get("uid", item.key))
            if self.publisher.run_now(plan, uid, token, now):
                post_events(
                    self.kube, body, [Event("Normal", "RunNow", f"run requested by token {token}")]
                )
            desired["runNowToken"] = token
        changes = scheduledtasks.status_changes(item.status, desired, now)
        if changes and self.kube.patch_status("scheduledtasks", item.namespace, item.name, changes):
            post_events(self.kube, body, plan.events)

    def forget(self, namespace: str, name: str) -> None:
        self.store.delete([contract.object_key(namespace, name)])


@dataclass
class RunStatusWriter:
    """Folds run records into status; the only writer of the run-owned fields."""

    kube: KubeApi
    clock: Clock
    views: dict[str, runstatus.RunView] = field(default_factory=dict)  # by object uid

    def apply(self, body: Mapping[str, Any], records: Sequence[contract.RunRecord]) -> None:
        meta = body["metadata"]
        uid = str(meta.get("uid", ""))
        view = self.views.get(uid) or runstatus.RunView.from_status(body.get("status") or {})
        limit, upcoming, suspended = self._schedule_facts(body)
        events = runstatus.fold(view, records, limit)
        patch = runstatus.render(view, upcoming, suspended)
        try:
            written = self.kube.patch_status(
                "scheduledtasks", meta["namespace"], meta["name"], patch
            )
        except Exception:
            self.views.pop(uid, None)  # rebuild from the stored status next time
            raise
        if written:
            self.views[uid] = view
            post_events(self.kube, body, events)

    def _schedule_facts(self, body: Mapping[str, Any]) -> tuple[int, dt.datetime | None, bool]:
        try:
            spec = parse_scheduled_task(body.get("spec"))
        except InvalidSpec:
            return 5, None, True
        created = scheduledtasks.ObservedTask.from_body(body).created
        schedule = scheduledtasks.schedule_spec(spec, created).build()
        return spec.history_limit, schedule.next_after(self.clock()), spec.suspend

    def forget(self, uid: str) -> None:
        self.views.pop(uid, None)


@dataclass
class WorkerPoolReconciler:
    kube: KubeApi
    clock: Clock

    def reconcile(self, body: Mapping[str, Any]) -> None:
        observed = workerpools.ObservedPool.from_body(body)
        now = self.clock()
        plan = workerpools.plan_worker_pool(observed, now)
        changes = scheduledtasks.status_changes(observed.status, plan.status, now)
        if changes and self.kube.patch_status(
            "workerpools", observed.namespace, observed.name, changes
        ):
            post_events(self.kube, body, plan.events)


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
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        for directory in _CERT_DIRS:
            shutil.rmtree(directory, ignore_errors=True)


def build_runtime(settings: OperatorSettings, clock: Clock = utc_now) -> Runtime:
    kube = KubeApi(api_client())
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30)
    store = RedbeatStore(client, settings.redbeat_prefix)
    records = RunRecordStream(client)
    publisher = RunPublisher(settings, client)
    return Runtime(
        settings=settings,
        kube=kube,
        redis=client,
        store=store,
        records=records,
        clock=clock,
        scheduled_tasks=ScheduledTaskReconciler(kube, store, publisher, clock),
        run_status=RunStatusWriter(kube, clock),
        worker_pools=WorkerPoolReconciler(kube, clock),
        closers=[kube.client.close, client.close],
    )
