"""The webhook's answers: warnings kubectl prints (fields a pool ignores, a narrowed
allowedTasks, a task no worker registers), and kubectl scale refused on an autoscaled
pool (the scale subresource's AdmissionReview)."""

from __future__ import annotations

from typing import Any

from beatkeeper.operator.webhook import Known, respond

POOLS = {
    ("team", "auto"): {"image": "w:1", "autoscaling": {"maxReplicas": 3}},
    ("team", "manual"): {"image": "w:1", "replicas": 1},
    ("team", "apps"): {"image": "w:1", "allowedTasks": ["app.*", "beatkeeper.*"]},
}
TASKS = {
    ("team", name): {
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"workerPool": pool, "every": "1h", "task": {"name": task}},
    }
    for name, pool, task in (
        ("report", "apps", "app.reports.daily"),
        ("billing", "apps", "app.billing.run"),
        ("ping", "apps", "beatkeeper.http"),
        ("elsewhere", "manual", "app.reports.daily"),
    )
}
REGISTERED = {("team", "apps"): ("app.billing.run", "app.reports.daily", "beatkeeper.http")}
KNOWN = Known(pools=lambda: POOLS, tasks=lambda: TASKS, registered=lambda: REGISTERED)


def review(request: dict[str, Any], path: str = "/workerpool") -> dict[str, Any]:
    body = {"request": {"uid": "u1", "namespace": "team", **request}}
    return dict(respond(path, body, KNOWN)["response"])


def test_replicas_beside_autoscaling_is_admitted_with_a_warning() -> None:
    spec = {"image": "w:1", "replicas": 2, "autoscaling": {"maxReplicas": 3}}
    answer = review({"operation": "CREATE", "object": {"spec": spec}})
    assert answer["allowed"] is True
    assert answer["warnings"] == [
        "spec.replicas: ignored while spec.autoscaling is set; the autoscaler sets the "
        "replicas between spec.autoscaling.minReplicas and maxReplicas"
    ]
    plain = review({"operation": "CREATE", "object": {"spec": {"image": "w:1", "replicas": 2}}})
    assert plain == {"allowed": True, "uid": "u1"}


def test_kubectl_scale_is_refused_on_an_autoscaled_pool_only() -> None:
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 5}}
    refused = review(
        {"operation": "UPDATE", "subResource": "scale", "name": "auto", "object": scale}
    )
    assert refused["allowed"] is False
    assert refused["status"]["message"].startswith(
        "spec.replicas: WorkerPool team/auto is autoscaled (spec.autoscaling)"
    )
    allowed = review(
        {"operation": "UPDATE", "subResource": "scale", "name": "manual", "object": scale}
    )
    assert allowed["allowed"] is True


def test_narrowing_allowed_tasks_names_the_scheduled_tasks_it_strands() -> None:
    old = POOLS[("team", "apps")]
    new = {**old, "allowedTasks": ["app.billing.*", "beatkeeper.*"]}
    answer = review(
        {"operation": "UPDATE", "name": "apps", "object": {"spec": new}, "oldObject": {"spec": old}}
    )
    assert answer["allowed"] is True
    assert answer["warnings"] == [
        "spec.allowedTasks: no longer allows the task of ScheduledTasks report on WorkerPool "
        "'apps'; they stay Stalled (InvalidSpec) and run nothing until their task is allowed "
        "again or changed"
    ]
    widened = {**old, "allowedTasks": ["*"]}
    answer = review(
        {
            "operation": "UPDATE",
            "name": "apps",
            "object": {"spec": widened},
            "oldObject": {"spec": old},
        }
    )
    assert "warnings" not in answer
    created = review({"operation": "CREATE", "name": "apps", "object": {"spec": new}})
    assert "warnings" not in created  # a new pool strands nothing


def test_a_task_no_worker_of_the_pool_registers_is_admitted_with_a_warning() -> None:
    def task_review(pool: str, name: str) -> dict[str, Any]:
        spec = {"workerPool": pool, "every": "1h", "task": {"name": name}}
        return review({"operation": "CREATE", "object": {"spec": spec}}, "/scheduledtask")

    typo = task_review("apps", "app.reports.dialy")
    assert typo["allowed"] is True
    assert typo["warnings"] == [
        "spec.task.name: 'app.reports.dialy' is allowed by WorkerPool 'apps' but none of its "
        "workers registers it (status.registeredTasks), so its runs would fail with "
        "TaskNotRegistered; check the name, or add the module that defines it to the "
        "pool's spec.taskModules"
    ]
    assert "warnings" not in task_review("apps", "app.reports.daily")
    assert "warnings" not in task_review("manual", "app.anything")  # nothing known: no guess
    refused = task_review("apps", "other.task")
    assert refused["allowed"] is False
    assert "warnings" not in refused
