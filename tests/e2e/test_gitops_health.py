"""One health model, three tools agreeing: kstatus (Flux, kpt), the Argo CD Lua scripts in
gitops/argocd/ and the Flux healthCheckExprs in gitops/flux/, each run by its real library
(tests/health builds kstatus, gopher-lua and cel-go into one checker) on live objects of
the real kube-apiserver, written by the real operator.

The pool cases whose pods cannot start, and routine scaling, need pods: they are in
test_chart_on_node.py and test_workerpools.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import (
    CURRENT,
    FAILED,
    IN_PROGRESS,
    SUSPENDED,
    apply,
    condition,
    eventually,
    get_json,
    hostless_pool,
    verdicts,
)
from e2e_helpers import scheduled_task as task

from beatkeeper_devenv.kube import kubectl

pytestmark = pytest.mark.timeout(180)


def reason_is(kubeconfig: Path, namespace: str, kind: str, name: str, reason: str) -> Any:
    def check() -> dict[str, Any] | None:
        found = get_json(kubeconfig, kind, name, "-n", namespace)
        ready = condition(found, "Ready") or {}
        current = found["status"].get("observedGeneration") == found["metadata"]["generation"]
        return found if current and ready.get("reason") == reason else None

    check.__doc__ = f"{kind}/{name} has Ready reason {reason}"
    return eventually(check, timeout=60)


def stalled_with(kubeconfig: Path, namespace: str, name: str, reason: str) -> Any:
    def check() -> dict[str, Any] | None:
        found = get_json(kubeconfig, "st", name, "-n", namespace)
        stalled = condition(found, "Stalled") or {}
        return found if stalled.get("reason") == reason else None

    check.__doc__ = f"st/{name} is Stalled with {reason}"
    return eventually(check, timeout=60)


def test_an_object_the_operator_has_not_seen_is_in_progress_for_every_tool(
    kubeconfig: Path, crds: Path, namespace: str, health_checker: Path
) -> None:
    # The apiserver's answer to the create itself: no operator can have written status yet.
    # The CRD defaults status.observedGeneration to 0, so kstatus sees 0 < generation 1.
    created = [
        json.loads(
            kubectl(kubeconfig, "create", "-n", namespace, "-o", "json", "-f", "-",
                    stdin=json.dumps(manifest)).stdout
        )
        for manifest in (hostless_pool(), task("t", every="1h", task={"name": "e2e.count"}))
    ]  # fmt: skip
    for obj in created:
        assert obj["status"]["observedGeneration"] == 0
        assert "conditions" not in obj["status"]
    assert verdicts(health_checker, *created) == [IN_PROGRESS, IN_PROGRESS]


def test_each_scheduled_task_case_gets_the_same_verdict_from_each_tool(
    kubeconfig: Path,
    namespace: str,
    operator: Any,
    beat: Any,
    workers: Any,
    health_checker: Path,
) -> None:
    # The pool does not exist yet: Reconciling, so every tool waits.
    apply(kubeconfig, namespace, task("fine", every="1h", task={"name": "e2e.count"}))
    waiting = reason_is(kubeconfig, namespace, "st", "fine", "WorkerPoolNotFound")
    # A task the pool will not allow (admission can only refuse it once the pool exists):
    # Stalled, InvalidSpec, when the pool arrives.
    apply(kubeconfig, namespace, task("denied", every="1h", task={"name": "other.task"}))
    apply(kubeconfig, namespace, hostless_pool())
    workers.start(namespace)
    pool = reason_is(kubeconfig, namespace, "wp", "p", "ScaledToZero")
    fine = reason_is(kubeconfig, namespace, "st", "fine", "Scheduled")
    apply(
        kubeconfig, namespace, task("paused", every="1h", suspend=True, task={"name": "e2e.count"})
    )
    paused = reason_is(kubeconfig, namespace, "st", "paused", "Suspended")
    denied = stalled_with(kubeconfig, namespace, "denied", "InvalidSpec")
    # Allowed by the glob, never registered by the worker: every run fails (TaskNotRegistered).
    apply(
        kubeconfig,
        namespace,
        task("failing", every="1s", failureThreshold=3, retry={"maxRetries": 0},
             task={"name": "e2e.not_registered"}),
    )  # fmt: skip

    failing = stalled_with(kubeconfig, namespace, "failing", "RunsFailing")
    assert failing["status"]["consecutiveFailures"] >= 3
    assert failing["status"]["lastRun"]["reason"] == "TaskNotRegistered"
    assert failing["status"]["nextScheduleTime"]  # still armed: the next run may succeed

    assert verdicts(health_checker, waiting, pool, fine, paused, denied, failing) == [
        IN_PROGRESS,
        CURRENT,
        CURRENT,
        SUSPENDED,
        FAILED,
        FAILED,
    ]
    warnings = [
        e
        for e in get_json(kubeconfig, "events", "-n", namespace)["items"]
        if e["involvedObject"]["name"] == "failing" and e["reason"] == "RunsFailing"
    ]
    assert len(warnings) == 1, warnings
    assert warnings[0]["type"] == "Warning"

    # The next successful run clears it (the task is fixed; a success resets the count).
    fixed = {"spec": {"task": {"name": "e2e.count", "args": [f"{namespace}:f"]}}}
    kubectl(kubeconfig, "patch", "st", "failing", "-n", namespace, "--type=merge", "-p",
            json.dumps(fixed))  # fmt: skip

    def recovered() -> dict[str, Any] | None:
        """a success cleared RunsFailing"""
        found = get_json(kubeconfig, "st", "failing", "-n", namespace)
        ready = condition(found, "Ready") or {}
        fresh = found["status"]["observedGeneration"] == found["metadata"]["generation"]
        return found if fresh and ready.get("status") == "True" else None

    healed = eventually(recovered, timeout=60)
    assert healed["status"]["consecutiveFailures"] == 0
    assert verdicts(health_checker, healed) == [CURRENT]
