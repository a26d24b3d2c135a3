"""Why a pool's pods cannot start: each kubelet or scheduler status gives a reason, a next step."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pool_helpers import observed_deployment

from beatkeeper.operator.podhealth import ObservedPod, diagnose
from beatkeeper.operator.workerpools import ObservedPool, PoolWorld, plan_worker_pool

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def pod_body(
    name: str = "p-workers-1",
    *,
    waiting: tuple[str, str] | None = None,
    last_exit: tuple[int, str] | None = None,
    restarts: int = 0,
    unschedulable: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    container: dict[str, Any] = {"name": "worker", "restartCount": restarts}
    if waiting:
        container["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    if last_exit:
        container["lastState"] = {"terminated": {"exitCode": last_exit[0], "reason": last_exit[1]}}
    if waiting or last_exit:
        status["containerStatuses"] = [container]
    if unschedulable is not None:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        ]
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T12:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "worker", "image": "team/worker:1"}]},
        "status": status,
    }


def trouble(*bodies: dict[str, Any]) -> tuple[str, str] | None:
    found = diagnose("team", [ObservedPod.from_body(b) for b in bodies], "beatkeeper-redis", "url")
    return (found.reason, found.message) if found else None


def test_a_missing_broker_secret_names_it_and_the_command_that_creates_it() -> None:
    found = trouble(
        pod_body(waiting=("CreateContainerConfigError", 'secret "beatkeeper-redis" not found'))
    )
    assert found is not None
    reason, message = found
    assert reason == "BrokerSecretMissing"
    assert "team/beatkeeper-redis" in message
    assert "kubectl create secret generic beatkeeper-redis -n team --from-literal=url=" in message


def test_a_missing_key_of_the_broker_secret_is_its_own_reason() -> None:
    message = "couldn't find key url in Secret team/beatkeeper-redis"
    found = trouble(pod_body(waiting=("CreateContainerConfigError", message)))
    assert found is not None
    assert found[0] == "BrokerSecretKeyMissing"
    assert "has no key 'url'" in found[1]


def test_another_missing_reference_is_a_config_error_with_the_kubelet_message() -> None:
    found = trouble(
        pod_body(waiting=("CreateContainerConfigError", 'configmap "team-settings" not found'))
    )
    assert found is not None
    assert found[0] == "PodConfigError"
    assert 'configmap "team-settings" not found' in found[1]
    assert "kubectl describe pod p-workers-1 -n team" in found[1]


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"])
def test_an_image_the_node_cannot_get_is_image_not_present(reason: str) -> None:
    found = trouble(pod_body(waiting=(reason, "dial tcp 127.0.0.1:9: connect: connection refused")))
    assert found is not None
    assert found[0] == "ImageNotPresent"
    assert "'team/worker:1'" in found[1]
    assert "connection refused" in found[1]


def test_the_image_message_is_the_same_in_back_off_and_in_the_pull_error() -> None:
    error = "failed to resolve reference: connection refused"
    pulling = trouble(pod_body(waiting=("ErrImagePull", error)))
    backing_off = trouble(
        pod_body(waiting=("ImagePullBackOff", f'Back-off pulling image "x": ErrImagePull: {error}'))
    )
    assert pulling == backing_off


def test_a_crash_loop_points_to_the_previous_logs() -> None:
    found = trouble(
        pod_body(waiting=("CrashLoopBackOff", "back-off 20s"), last_exit=(1, "Error"), restarts=3)
    )
    assert found is not None
    reason, message = found
    assert reason == "CrashLoop"
    assert "code 1" in message
    assert "restarted 3 times" in message
    assert "kubectl logs p-workers-1 -n team --previous" in message


def test_an_unschedulable_pod_quotes_the_scheduler() -> None:
    found = trouble(pod_body(unschedulable="0/1 nodes are available: 1 Insufficient cpu."))
    assert found is not None
    assert found[0] == "Unschedulable"
    assert "Insufficient cpu" in found[1]


def test_pods_that_start_or_are_going_away_are_no_trouble() -> None:
    assert trouble(pod_body(), pod_body(waiting=("ContainerCreating", ""))) is None
    gone = pod_body(waiting=("CrashLoopBackOff", ""), deleting=True)
    assert trouble(gone) is None


def test_configuration_wins_over_a_crash_loop_in_another_pod() -> None:
    crashing = pod_body("a", waiting=("CrashLoopBackOff", ""), restarts=2)
    unconfigured = pod_body("b", waiting=("CreateContainerConfigError", 'secret "x" not found'))
    found = trouble(crashing, unconfigured)
    assert found is not None
    assert found[0] == "PodConfigError"


def pool_body() -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": "p", "uid": "u1", "generation": 1},
        "spec": {"image": "team/worker:1", "replicas": 1, "allowedTasks": ["beatkeeper.*"]},
        "status": {},
    }


def test_the_pool_is_stalled_with_the_reason_and_one_warning_but_still_converges() -> None:
    observed = ObservedPool.from_body(pool_body())
    pods = (
        ObservedPod.from_body(
            pod_body(waiting=("CreateContainerConfigError", 'secret "beatkeeper-redis" not found'))
        ),
    )
    deployment = observed_deployment(observed.ref, observed.spec, replicas=1, ready=0)
    world = PoolWorld(deployment=deployment, pods=pods)
    plan = plan_worker_pool(observed, NOW, world)
    conditions = {c["type"]: c for c in plan.status["conditions"]}
    assert conditions["Stalled"]["status"] == "True"
    assert conditions["Stalled"]["reason"] == "BrokerSecretMissing"
    assert conditions["Ready"]["status"] == "False"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "BrokerSecretMissing")]
    assert plan.status["desiredReplicas"] == 1  # the Deployment keeps its replicas

    again = ObservedPool.from_body({**pool_body(), "status": plan.status})
    assert plan_worker_pool(again, NOW, world).events == []  # the warning is posted once
