"""What the operator holds while it runs: adapters, the clock, the reconcilers.

Built once at start-up and kept in kopf's memo. The reconcilers are the
handler layer: they gather what was observed, ask the planner, and apply the
plan through the adapters.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import kopf

from beatkeeper.api.validation import InvalidSpec, parse_worker_pool
from beatkeeper.api.workerpool import WorkerPoolSpec
from beatkeeper.operator import scheduledtasks, workerpools
from beatkeeper.operator.conditions import Event
from beatkeeper.operator.kubeapi import KubeApi, api_client
from beatkeeper.pki import CertificateAuthority
from beatkeeper.settings import OperatorSettings

Clock = Callable[[], dt.datetime]
_CERT_DIRS: list[Path] = []


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


def _post(body: Mapping[str, Any], events: list[Event]) -> None:
    for event in events:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, dict(body))), type=event.type, reason=event.reason, message=event.message
        )


def pool_spec(raw: Mapping[str, Any] | None) -> WorkerPoolSpec | None:
    if raw is None:
        return None
    try:
        return parse_worker_pool(raw)
    except InvalidSpec:
        return None


@dataclass
class ScheduledTaskReconciler:
    kube: KubeApi
    clock: Clock

    def reconcile(
        self, body: Mapping[str, Any], pools: Mapping[tuple[str, str], Mapping[str, Any]]
    ) -> None:
        observed = scheduledtasks.ObservedTask.from_body(body)
        pool_name = str(observed.spec.get("workerPool", ""))
        raw_pool = pools.get((observed.namespace, pool_name))
        now = self.clock()
        plan = scheduledtasks.plan_scheduled_task(
            observed, pool_spec(raw_pool), raw_pool is not None, now
        )
        changes = scheduledtasks.status_changes(observed.status, plan.status, now)
        if changes and self.kube.patch_status(
            "scheduledtasks", observed.namespace, observed.name, changes
        ):
            _post(body, plan.events)


@dataclass
class WorkerPoolReconciler:
    kube: KubeApi
    clock: Clock

    def reconcile(self, body: Mapping[str, Any]) -> None:
        observed = workerpools.ObservedPool.from_body(body)
        plan = workerpools.plan_worker_pool(observed, self.clock())
        changes = scheduledtasks.status_changes(observed.status, plan.status, self.clock())
        if changes and self.kube.patch_status(
            "workerpools", observed.namespace, observed.name, changes
        ):
            _post(body, plan.events)


@dataclass
class Runtime:
    settings: OperatorSettings
    kube: KubeApi
    clock: Clock
    scheduled_tasks: ScheduledTaskReconciler
    worker_pools: WorkerPoolReconciler
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        for directory in _CERT_DIRS:
            shutil.rmtree(directory, ignore_errors=True)


def build_runtime(settings: OperatorSettings, clock: Clock = utc_now) -> Runtime:
    kube = KubeApi(api_client())
    return Runtime(
        settings=settings,
        kube=kube,
        clock=clock,
        scheduled_tasks=ScheduledTaskReconciler(kube, clock),
        worker_pools=WorkerPoolReconciler(kube, clock),
        closers=[kube.client.close],
    )
