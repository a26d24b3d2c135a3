"""The worker Deployment built from a WorkerPool, and the pool planner that owns it."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest
from pool_helpers import observed_deployment

from beatkeeper.api.validation import parse_worker_pool
from beatkeeper.operator.autoscaler import BacklogSample
from beatkeeper.operator.conditions import find, parse_conditions
from beatkeeper.operator.deployments import (
    ObservedDeployment,
    PoolRef,
    build_worker_deployment,
    deployment_name,
    selector,
)
from beatkeeper.operator.workerpools import ObservedPool, PoolPlan, PoolWorld, plan_worker_pool

NOW = dt.datetime(2026, 3, 7, 12, 0, 0, tzinfo=dt.UTC)
REF = PoolRef("team", "reports", "uid-1")
SPEC = {
    "image": "registry.example/worker:1.2",
    "taskModules": ["myapp.tasks", "myapp.more"],
    "allowedTasks": ["myapp.*", "beatkeeper.http"],
    "allowedHosts": ["169.254.169.254"],
    "concurrency": 4,
    "pool": "threads",
    "prefetch": 2,
    "terminationGracePeriodSeconds": 600,
    "brokerSecretRef": {"name": "redis-creds", "key": "broker"},
}
TEMPLATE = {
    "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "512Mi"}},
    "env": [
        {"name": "APP_MODE", "value": "batch"},
        {"name": "BEATKEEPER_WORKER_QUEUE", "value": "beatkeeper.other.pool"},
    ],
    "envFrom": [{"configMapRef": {"name": "app-config"}}],
    "nodeSelector": {"pool": "batch"},
    "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {}},
    "serviceAccountName": "reports-worker",
    "annotations": {"prometheus.io/scrape": "true"},
    "labels": {"team": "finance", "app.kubernetes.io/name": "mine"},
    "priorityClassName": "batch-low",
}


def build(replicas: int = 3, **overrides: Any) -> dict[str, Any]:
    return build_worker_deployment(REF, parse_worker_pool({**SPEC, **overrides}), replicas)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return found


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container(deployment)["env"]}


def test_name_labels_selector_and_owner() -> None:
    deployment = build()
    meta = deployment["metadata"]
    assert (meta["name"], meta["namespace"]) == ("reports-workers", "team")
    assert meta["labels"] == {
        "app.kubernetes.io/name": "beatkeeper-worker",
        "app.kubernetes.io/instance": "reports",
        "app.kubernetes.io/managed-by": "beatkeeper",
        "beatkeeper.dev/workerpool": "reports",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "beatkeeper.dev/v1alpha1",
            "kind": "WorkerPool",
            "name": "reports",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    match = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert match.items() <= pod_labels.items()
    assert selector("reports") == ",".join(f"{k}={v}" for k, v in sorted(match.items()))
    assert deployment["spec"]["replicas"] == 3


def test_worker_runs_the_pools_queue_and_settings() -> None:
    deployment = build()
    assert container(deployment)["command"] == ["beatkeeper-worker"]
    assert container(deployment)["image"] == "registry.example/worker:1.2"
    values = {name: item.get("value") for name, item in env(deployment).items()}
    assert values["BEATKEEPER_WORKER_QUEUE"] == "beatkeeper.team.reports"
    assert values["BEATKEEPER_WORKER_CONCURRENCY"] == "4"
    assert values["BEATKEEPER_WORKER_POOL"] == "threads"
    assert values["BEATKEEPER_WORKER_PREFETCH"] == "2"
    assert values["BEATKEEPER_TASK_MODULES"] == "myapp.tasks,myapp.more"
    assert values["BEATKEEPER_ALLOWED_TASKS"] == "myapp.*,beatkeeper.http"
    assert values["BEATKEEPER_ALLOWED_HOSTS"] == "169.254.169.254"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 600


def test_broker_url_only_as_a_secret_reference() -> None:
    deployment = build()
    broker = env(deployment)["BEATKEEPER_BROKER_URL"]
    assert broker == {
        "name": "BEATKEEPER_BROKER_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis-creds", "key": "broker"}},
    }
    assert "redis://" not in json.dumps(deployment)


def test_restricted_security_context_by_default() -> None:
    pod = build()["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(build())["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # A read-only root filesystem: /tmp (the liveness file lives there) is an emptyDir.
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert container(build())["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert env(build())["BEATKEEPER_LIVENESS_FILE"]["value"].startswith("/tmp/")
    assert pod["automountServiceAccountToken"] is False
    assert "hostNetwork" not in pod


def test_liveness_probe_reads_the_workers_file() -> None:
    probe = container(build())["livenessProbe"]
    assert probe["exec"]["command"] == [
        "python",
        "-m",
        "beatkeeper_worker.liveness",
        "--max-age",
        "30",
    ]
    assert container(build())["startupProbe"]["exec"] == probe["exec"]


def test_template_overrides() -> None:
    deployment = build(template=TEMPLATE)
    pod = deployment["spec"]["template"]["spec"]
    found = container(deployment)
    assert found["resources"] == TEMPLATE["resources"]
    assert found["envFrom"] == TEMPLATE["envFrom"]
    assert env(deployment)["APP_MODE"] == {"name": "APP_MODE", "value": "batch"}
    assert pod["nodeSelector"] == {"pool": "batch"}
    assert pod["tolerations"] == TEMPLATE["tolerations"]
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert pod["serviceAccountName"] == "reports-worker"
    assert "automountServiceAccountToken" not in pod  # the account's own setting applies
    assert pod["priorityClassName"] == "batch-low"
    meta = deployment["spec"]["template"]["metadata"]
    assert meta["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9808",  # the worker's /metrics, unless the template says otherwise
        "prometheus.io/path": "/metrics",
    }
    assert meta["labels"]["team"] == "finance"


def test_template_cannot_change_the_pools_identity() -> None:
    deployment = build(template=TEMPLATE)
    names = [item["name"] for item in container(deployment)["env"]]
    assert names.count("BEATKEEPER_WORKER_QUEUE") == 1
    assert env(deployment)["BEATKEEPER_WORKER_QUEUE"]["value"] == "beatkeeper.team.reports"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "beatkeeper-worker"


def test_long_pool_names_give_valid_stable_names() -> None:
    pool = "a" * 60 + ".b"
    name = deployment_name(pool)
    assert len(name) <= 63
    assert name == deployment_name(pool)
    assert name != deployment_name("a" * 60 + ".c")
    labels = build_worker_deployment(PoolRef("ns", pool, "u"), parse_worker_pool(SPEC), 1)[
        "metadata"
    ]["labels"]
    assert all(len(value) <= 63 for value in labels.values())


def test_spec_hash_follows_the_template_not_the_replicas() -> None:
    def digest(deployment: dict[str, Any]) -> str:
        value: str = deployment["metadata"]["annotations"]["beatkeeper.dev/spec-hash"]
        return value

    assert digest(build(1)) == digest(build(7))
    assert digest(build(1)) != digest(build(1, image="registry.example/worker:1.3"))
    assert digest(build(1)) != digest(build(1, template=TEMPLATE))


# The pool planner.


def pool(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> ObservedPool:
    return ObservedPool.from_body(
        {
            "metadata": {"namespace": "team", "name": "reports", "uid": "uid-1", "generation": 2},
            "spec": SPEC if spec is None else spec,
            "status": status or {},
        }
    )


def observed(
    replicas: int,
    ready: int | None = None,
    spec: dict[str, Any] | None = None,
    owner: str = "uid-1",
) -> ObservedDeployment:
    return observed_deployment(REF, spec or SPEC, replicas, ready, owner)


def plan(
    world: PoolWorld, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> PoolPlan:
    return plan_worker_pool(pool(spec, status), NOW, world)


def test_a_new_pool_creates_its_deployment() -> None:
    result = plan(PoolWorld(backlog=BacklogSample(0, 0, 0)), {**SPEC, "replicas": 2})
    assert result.action == "create"
    assert result.deployment is not None
    assert result.deployment["spec"]["replicas"] == 2
    assert result.health.reason == "Creating"
    assert [(e.reason, e.message) for e in result.events] == [("Scaled", "spec.replicas 0 -> 2")]
    assert result.status["desiredReplicas"] == 2
    assert result.status["selector"] == selector("reports")
    assert result.status["lastScaleTime"] == "2026-03-07T12:00:00Z"


def test_ready_when_every_desired_replica_is() -> None:
    spec = {**SPEC, "replicas": 2}
    starting = plan(
        PoolWorld(deployment=observed(2, ready=1), backlog=BacklogSample(3, 0, 0)), spec
    )
    assert starting.action == "none"
    assert (starting.health.state, starting.health.message) == (
        "reconciling",
        "scaling up to 2: 1 of 2 replicas ready",
    )
    assert starting.status["backlog"] == 3
    ready = plan(PoolWorld(deployment=observed(2)), spec)
    assert (ready.health.state, ready.health.reason) == ("ready", "ReplicasReady")
    assert ready.events == []
    assert (ready.status["replicas"], ready.status["readyReplicas"]) == (2, 2)


def test_manual_scaling_follows_spec_replicas() -> None:
    result = plan(PoolWorld(deployment=observed(2)), {**SPEC, "replicas": 5})
    assert result.action == "apply"
    assert result.deployment is not None
    assert result.deployment["spec"]["replicas"] == 5
    assert [e.message for e in result.events] == ["spec.replicas 2 -> 5"]
    assert result.poll_seconds == 1.0


def test_a_changed_template_is_applied() -> None:
    result = plan(PoolWorld(deployment=observed(1)), {**SPEC, "image": "w:2"})
    assert (result.action, result.health.reason) == ("apply", "Updating")


def test_scaled_to_zero_on_purpose_is_ready() -> None:
    spec = {**SPEC, "autoscaling": {"maxReplicas": 3}}
    result = plan(PoolWorld(deployment=observed(0), backlog=BacklogSample(0, 0, 0)), spec)
    assert (result.health.state, result.health.reason) == ("ready", "ScaledToZero")
    limited = find(parse_conditions(result.status["conditions"]), "ScalingLimited")
    assert limited is not None
    assert limited.status == "False"


def test_autoscaled_pool_scales_by_backlog_and_reports_the_clamp() -> None:
    spec = {**SPEC, "autoscaling": {"maxReplicas": 3, "pollSeconds": 2}}
    result = plan(PoolWorld(deployment=observed(0), backlog=BacklogSample(37, 0, 0)), spec)
    assert result.deployment is not None
    assert result.deployment["spec"]["replicas"] == 3
    assert [e.message for e in result.events] == ["backlog 37 -> 3 replicas"]
    assert (result.status["desiredReplicas"], result.status["backlog"]) == (3, 37)
    limited = find(parse_conditions(result.status["conditions"]), "ScalingLimited")
    assert limited is not None
    assert (limited.status, limited.reason) == ("True", "TooManyReplicas")
    assert result.poll_seconds == 2


def test_unreadable_backlog_keeps_the_replicas() -> None:
    spec = {**SPEC, "autoscaling": {"maxReplicas": 5}}
    result = plan(PoolWorld(deployment=observed(2), backlog_error="connection refused"), spec)
    assert result.action == "none"
    assert result.events == []
    assert result.health.reason == "BacklogUnknown"
    assert "connection refused" in result.health.message


@pytest.mark.parametrize("owner", ["someone-else", None])
def test_a_deployment_the_pool_does_not_own_is_left_alone(owner: str | None) -> None:
    foreign = observed(1, owner=owner or "x")
    if owner is None:
        foreign = ObservedDeployment.from_body({"metadata": {"name": "reports-workers"}})
    result = plan(PoolWorld(deployment=foreign))
    assert result.action == "none"
    assert result.deployment is None
    assert (result.health.state, result.health.reason) == ("stalled", "DeploymentConflict")
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "DeploymentConflict")]
    # Once Stalled for this generation, the warning is not posted again.
    again = plan(PoolWorld(deployment=foreign), status=result.status)
    assert again.events == []


def test_invalid_spec_is_stalled_and_touches_nothing() -> None:
    result = plan(PoolWorld(deployment=observed(1)), {**SPEC, "pool": "gevent"})
    assert (result.action, result.health.reason) == ("none", "InvalidSpec")
    assert [e.reason for e in result.events] == ["InvalidSpec"]


def test_routine_scaling_of_an_autoscaled_pool_stays_ready() -> None:
    spec = {**SPEC, "autoscaling": {"minReplicas": 1, "maxReplicas": 6}}
    up = plan(PoolWorld(deployment=observed(2, spec=spec), backlog=BacklogSample(24, 0, 0)), spec)
    assert up.action == "apply"
    assert (up.health.state, up.health.reason) == ("ready", "Scaling")
    assert up.health.message == "scaling up to 6: 2 of 6 replicas ready"
    starting = plan(
        PoolWorld(deployment=observed(6, ready=3, spec=spec), backlog=BacklogSample(24, 0, 0)),
        spec,
    )
    assert (starting.health.state, starting.health.reason) == ("ready", "Scaling")
    draining = replace(
        observed(2, spec=spec), status_replicas=4, ready_replicas=4, updated_replicas=4
    )
    down = plan(PoolWorld(deployment=draining, backlog=BacklogSample(2, 0, 0)), spec)
    assert (down.health.state, down.health.reason) == ("ready", "Scaling")
    assert down.health.message == "scaling down to 2: 4 replicas still running, 4 ready"
    assert "/" not in up.health.message + down.health.message  # never "4/3 replicas ready"


def test_an_autoscaled_pool_below_its_floor_is_reconciling() -> None:
    spec = {**SPEC, "autoscaling": {"minReplicas": 2, "maxReplicas": 6}}
    result = plan(
        PoolWorld(deployment=observed(2, ready=1, spec=spec), backlog=BacklogSample(0, 0, 0)),
        spec,
    )
    assert (result.health.state, result.health.reason) == ("reconciling", "Scaling")


def test_a_deployment_past_its_progress_deadline_stalls_the_pool() -> None:
    stuck = replace(
        observed(1, ready=0),
        progress_failed='ReplicaSet "reports-workers-5d" has timed out progressing.',
    )
    result = plan(
        PoolWorld(deployment=stuck, backlog=BacklogSample(0, 0, 0)), {**SPEC, "replicas": 1}
    )
    assert (result.health.state, result.health.reason) == ("stalled", "ProgressDeadlineExceeded")
    assert "has timed out progressing" in result.health.message
    assert f"kubectl describe pods -n team -l {selector('reports')}" in result.health.message
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "ProgressDeadlineExceeded")]


def test_the_progress_deadline_is_read_from_the_deployment_conditions() -> None:
    body = build(1)
    body["status"] = {
        "conditions": [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "x" has timed out progressing.',
            },
        ]
    }
    assert (
        ObservedDeployment.from_body(body).progress_failed
        == 'ReplicaSet "x" has timed out progressing.'
    )
    body["status"]["conditions"][1].update(status="True", reason="NewReplicaSetAvailable")
    assert ObservedDeployment.from_body(body).progress_failed == ""
