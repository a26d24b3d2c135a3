"""The worker Deployment of a WorkerPool: built as a whole value, and read back.

Pure. `build_worker_deployment` turns a pool's spec into the Deployment the
operator applies (server-side apply, field manager `beatkeeper`): a
deterministic name, the pool's labels and selector, a controller owner
reference (so deleting the pool garbage-collects the Deployment and its pods),
and a pod template that runs `beatkeeper-worker` (the worker image's console
script) for the pool's queue under Pod Security "restricted", with the broker
URL only as a Secret reference (under Redis tenancy, the Secret the operator
wrote the pool's own credential into, and the pool's namespace as the workers'
key space).
`ObservedDeployment` is the part of a Deployment the planner reads back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from beatkeeper.api.base import API_VERSION, GROUP
from beatkeeper.api.workerpool import KIND, PodTemplate, WorkerPoolSpec
from beatkeeper_core import contract, tenancy

APP_NAME = "beatkeeper-worker"
MANAGED_BY = "beatkeeper"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
POOL_LABEL = f"{GROUP}/workerpool"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
CREDENTIAL_ANNOTATION = f"{GROUP}/redis-credential-generation"
CONTAINER = "worker"
WORKER_USER = 10001  # the worker image's numeric user (worker_image/Dockerfile)
LIVENESS_FILE = "/tmp/beatkeeper-worker.alive"  # noqa: S108 - an emptyDir
LIVENESS_PROBE = ["python", "-m", "beatkeeper_worker.liveness", "--max-age", "30"]
METRICS_PORT = 9808  # every worker serves /metrics here (the pod template's port "metrics")
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(METRICS_PORT),
    "prometheus.io/path": "/metrics",
}
_MAX_LABEL = 63


@dataclass(frozen=True)
class PoolRef:
    namespace: str
    name: str
    uid: str


def _bounded(text: str, limit: int) -> str:
    """`text`, or a stable shortening of it with a hash suffix when it is too long."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - 11].rstrip('-.')}-{digest}"


def deployment_name(pool: str) -> str:
    # Bounded like a label so ReplicaSet and pod names derived from it stay valid.
    return _bounded(f"{pool}-workers", _MAX_LABEL)


def selector_labels(pool: str) -> dict[str, str]:
    return {NAME_LABEL: APP_NAME, POOL_LABEL: _bounded(pool, _MAX_LABEL)}


def selector(pool: str) -> str:
    """The pods' label selector as a string (WorkerPool status.selector, for `kubectl scale`)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(pool).items()))


def pool_labels(pool: str) -> dict[str, str]:
    return {
        **selector_labels(pool),
        INSTANCE_LABEL: _bounded(pool, _MAX_LABEL),
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def owner_reference(pool: PoolRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


@dataclass(frozen=True)
class TenantSecret:
    """Under Redis tenancy: the Secret the operator wrote the pool's credential into,
    its generation (a new one restarts the pods), and the key space's namespace."""

    name: str
    generation: int
    namespace: str


def broker_secret(spec: WorkerPoolSpec, tenant: TenantSecret | None) -> tuple[str, str]:
    """(Secret, key) the workers' Redis URL comes from."""
    if tenant is not None:
        return tenant.name, tenancy.URL_KEY
    return spec.broker_secret_ref.name, spec.broker_secret_ref.key


def worker_env(
    queue: str, spec: WorkerPoolSpec, tenant: TenantSecret | None = None
) -> list[dict[str, Any]]:
    """The pool's worker settings, then the template's env minus the names set here."""
    secret, key = broker_secret(spec, tenant)
    ours: list[dict[str, Any]] = [
        {"name": "BEATKEEPER_WORKER_QUEUE", "value": queue},
        {
            "name": "BEATKEEPER_BROKER_URL",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
        },
        {"name": "BEATKEEPER_WORKER_POOL", "value": spec.pool},
        {"name": "BEATKEEPER_WORKER_CONCURRENCY", "value": str(spec.concurrency)},
        {"name": "BEATKEEPER_WORKER_PREFETCH", "value": str(spec.prefetch)},
        {"name": "BEATKEEPER_TASK_MODULES", "value": ",".join(spec.task_modules)},
        {"name": "BEATKEEPER_ALLOWED_TASKS", "value": ",".join(spec.allowed)},
        {"name": "BEATKEEPER_ALLOWED_HOSTS", "value": ",".join(spec.allowed_hosts)},
        {"name": "BEATKEEPER_LIVENESS_FILE", "value": LIVENESS_FILE},
        {"name": "BEATKEEPER_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "BEATKEEPER_METRICS_LISTEN", "value": "0.0.0.0"},  # noqa: S104 - the pod network
    ]
    if tenant is not None:
        ours.insert(2, {"name": "BEATKEEPER_TENANT", "value": tenant.namespace})
    taken = {item["name"] for item in ours}
    extra = spec.template.env if spec.template else []
    # The pool's identity (queue, broker, allowed tasks) is the spec's, never the template's.
    return ours + [dict(item) for item in extra if item.get("name") not in taken]


def _probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "exec": {"command": list(LIVENESS_PROBE)},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def worker_container(
    queue: str, spec: WorkerPoolSpec, tenant: TenantSecret | None = None
) -> dict[str, Any]:
    template = spec.template or PodTemplate()
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["beatkeeper-worker"],
        "env": worker_env(queue, spec, tenant),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
        # Start-up may wait for the broker; after that a stale file means a wedged loop.
        "startupProbe": _probe(period=2, failures=90),
        "livenessProbe": _probe(period=10, failures=3),
        "readinessProbe": _probe(period=5, failures=2),
    }
    if template.env_from:
        container["envFrom"] = [dict(item) for item in template.env_from]
    if template.resources is not None:
        container["resources"] = template.resources.to_api()
    return container


def pod_spec(
    queue: str, spec: WorkerPoolSpec, tenant: TenantSecret | None = None
) -> dict[str, Any]:
    template = spec.template or PodTemplate()
    pod: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_USER,
            "runAsGroup": WORKER_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "containers": [worker_container(queue, spec, tenant)],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if template.service_account_name:
        pod["serviceAccountName"] = template.service_account_name
    else:
        pod["automountServiceAccountToken"] = False  # workers never call the API
    optional = {
        "nodeSelector": template.node_selector,
        "tolerations": [dict(item) for item in template.tolerations],
        "affinity": template.affinity,
        "priorityClassName": template.priority_class_name,
    }
    pod.update({key: value for key, value in optional.items() if value})
    return pod


def spec_hash(deployment: Mapping[str, Any]) -> str:
    """A digest of everything but the replica count: a changed template means a new hash."""
    body = {**deployment, "spec": {**deployment["spec"], "replicas": None}}
    body["metadata"] = {k: v for k, v in body["metadata"].items() if k != "annotations"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def build_worker_deployment(
    pool: PoolRef, spec: WorkerPoolSpec, replicas: int, tenant: TenantSecret | None = None
) -> dict[str, Any]:
    template = spec.template or PodTemplate()
    labels = pool_labels(pool.name)
    queue = contract.queue_name(pool.namespace, pool.name)
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(pool.name),
            "namespace": pool.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(pool)],
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(pool.name)},
            # New pods first: a rollout never lowers capacity while old ones drain.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": {**template.labels, **labels},
                    "annotations": {
                        **SCRAPE_ANNOTATIONS,
                        **template.annotations,
                        **_credential_annotation(tenant),
                    },
                },
                "spec": pod_spec(queue, spec, tenant),
            },
        },
    }
    deployment["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(deployment)}
    return deployment


def _credential_annotation(tenant: TenantSecret | None) -> dict[str, str]:
    return {CREDENTIAL_ANNOTATION: str(tenant.generation)} if tenant is not None else {}


@dataclass(frozen=True)
class ObservedDeployment:
    """What the planner reads of an existing Deployment (also the operator's index value)."""

    name: str
    uid: str
    controller_uid: str | None
    spec_hash: str | None
    replicas: int  # spec.replicas: what the pool was told to run
    generation: int
    observed_generation: int
    status_replicas: int  # pods that exist (not terminating)
    ready_replicas: int
    updated_replicas: int
    # The controller's message when it gave up: Progressing=False, ProgressDeadlineExceeded.
    progress_failed: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ObservedDeployment:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        controller = next(
            (ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")), None
        )
        return cls(
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            controller_uid=str(controller["uid"]) if controller else None,
            spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION),
            replicas=int(1 if spec.get("replicas") is None else spec["replicas"]),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            status_replicas=int(status.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            updated_replicas=int(status.get("updatedReplicas") or 0),
            progress_failed=_progress_failed(status),
        )

    def owned_by(self, uid: str) -> bool:
        return self.controller_uid == uid

    @property
    def rolled_out(self) -> bool:
        """The controller saw the latest spec and every pod runs it."""
        return (
            self.observed_generation >= self.generation
            and self.updated_replicas == self.status_replicas
        )


def _progress_failed(status: Mapping[str, Any]) -> str:
    for item in status.get("conditions") or ():
        if (item.get("type"), item.get("status")) == ("Progressing", "False") and item.get(
            "reason"
        ) == "ProgressDeadlineExceeded":
            return str(item.get("message") or "progress deadline exceeded")
    return ""
