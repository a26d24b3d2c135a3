"""The Argo CD health checks in gitops/argocd/, run by a real Lua interpreter.

Argo CD runs health scripts with gopher-lua (Lua 5.1); each case runs under Lua
5.1 and 5.4 (lupa), with `obj` as Argo CD passes it. (The end-to-end tier runs the
same scripts in gopher-lua itself, beside kstatus, on live objects.) Sample statuses follow the
shapes in beatkeeper.api, and some come from the operator's own planners.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51, lua54
from pool_helpers import observed_deployment

from beatkeeper.api.validation import parse_worker_pool
from beatkeeper.operator import scheduledtasks, workerpools
from beatkeeper.operator.deployments import PoolRef

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "gitops" / "argocd"
SCRIPTS = {"ScheduledTask": "scheduledtask-health.lua", "WorkerPool": "workerpool-health.lua"}
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
RUNTIMES = {"lua5.1": lua51, "lua5.4": lua54}
Health = Callable[[str, dict[str, Any]], tuple[str, str]]


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


@pytest.fixture(params=sorted(RUNTIMES))
def health(request: pytest.FixtureRequest) -> Health:
    """health(kind, obj) -> (status, message), as Argo CD would compute them."""
    module = RUNTIMES[request.param]

    def run(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
        runtime = module.LuaRuntime()
        runtime.globals().obj = _to_lua(runtime, obj)
        result = runtime.execute((ARGOCD / SCRIPTS[kind]).read_text())
        return str(result["status"]), str(result["message"])

    return run


def cond(kind: str, status: str, reason: str = "", message: str = "", gen: int = 2) -> Any:
    return {
        "type": kind,
        "status": status,
        "reason": reason or kind,
        "message": message,
        "observedGeneration": gen,
        "lastTransitionTime": "2026-03-01T11:00:00Z",
    }


def kstatus(state: str, reason: str = "Scheduled", message: str = "", gen: int = 2) -> Any:
    return [
        cond(kind, "True" if kind.lower() == state else "False", reason, message, gen)
        for kind in ("Ready", "Reconciling", "Stalled")
    ]


def obj(status: dict[str, Any] | None, generation: int = 2, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "metadata": {"name": "x", "namespace": "team", "generation": generation},
        "spec": {"every": "5m", "workerPool": "p", "task": {"name": "beatkeeper.sleep"}, **spec},
    }
    if status is not None:
        body["status"] = status
    return body


def run_record(state: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "team/x@2026-03-01T11:55:00Z",
        "scheduledTime": "2026-03-01T11:55:00Z",
        "state": state,
        "attempts": 1,
        **extra,
    }


READY = {"observedGeneration": 2, "conditions": kstatus("ready", message="armed: every 5m")}

SCHEDULED_TASK_CASES = {
    "no status yet": (obj(None), "Progressing", "Waiting for the operator"),
    "conditions not written yet": (obj({"observedGeneration": 2}), "Progressing", "Waiting"),
    "generation not observed": (obj({**READY, "observedGeneration": 1}), "Progressing", "gen"),
    "reconciling": (
        obj({"observedGeneration": 2, "conditions": kstatus("reconciling", "PoolNotFound")}),
        "Progressing",
        "PoolNotFound",
    ),
    "stalled invalid spec": (
        obj(
            {
                "observedGeneration": 2,
                "conditions": kstatus("stalled", "InvalidSpec", "spec.schedule: minute 61"),
            }
        ),
        "Degraded",
        "InvalidSpec: spec.schedule: minute 61",
    ),
    "ready": (
        obj({**READY, "nextScheduleTime": "2026-03-01T12:05:00Z"}),
        "Healthy",
        "next run at 2026-03-01T12:05:00Z",
    ),
    "ready, last run succeeded": (
        obj({**READY, "lastRun": run_record("Succeeded")}),
        "Healthy",
        "armed",
    ),
    "ready, last run retrying": (obj({**READY, "lastRun": run_record("Retrying")}), "Healthy", ""),
    "ready, last run missed": (obj({**READY, "lastRun": run_record("Missed")}), "Healthy", ""),
    "ready, last run failed": (
        obj(
            {
                **READY,
                "lastRun": run_record(
                    "Failed", reason="TimeLimitExceeded", message="hard limit 60 s"
                ),
            }
        ),
        "Healthy",  # one failure is not a trend: spec.failureThreshold decides
        "armed",
    ),
    "runs failing": (
        obj(
            {
                **READY,
                "conditions": kstatus("stalled", "RunsFailing", "3 or more runs failed in a row"),
                "consecutiveFailures": 3,
                "lastRun": run_record("Failed", reason="TaskNotRegistered"),
            }
        ),
        "Degraded",
        "RunsFailing: 3 or more runs failed in a row",
    ),
    "suspended": (
        obj(
            {**READY, "conditions": kstatus("ready", "Suspended", "new runs are suspended")},
            suspend=True,
        ),
        "Suspended",
        "Suspended: new runs are suspended",
    ),
    "suspended wins over failed runs": (
        obj(
            {
                **READY,
                "conditions": kstatus("ready", "Suspended"),
                "consecutiveFailures": 9,
                "lastRun": run_record("Failed"),
            },
            suspend=True,
        ),
        "Suspended",
        "",
    ),
    "suspend not yet observed": (
        obj({**READY, "observedGeneration": 1}, generation=2, suspend=True),
        "Progressing",
        "",
    ),
    "stalled wins over suspended": (
        obj(
            {"observedGeneration": 2, "conditions": kstatus("stalled", "InvalidSpec")}, suspend=True
        ),
        "Degraded",
        "InvalidSpec",
    ),
    "ready false without a reason": (
        obj({"observedGeneration": 2, "conditions": [cond("Ready", "False")]}),
        "Progressing",
        "Waiting for Ready",
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEDULED_TASK_CASES))
def test_scheduled_task_health(health: Health, case: str) -> None:
    body, expected, message = SCHEDULED_TASK_CASES[case]
    status, text = health("ScheduledTask", body)
    assert status == expected
    assert message in text


def pool(status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "p", "namespace": "team", "generation": generation},
        "spec": {"image": "worker:1", "replicas": 1},
    }
    if status is not None:
        body["status"] = status
    return body


POOL_READY = {
    "observedGeneration": 2,
    "conditions": kstatus("ready", "Scaling", "scaling up to 3: 2 of 3 replicas ready"),
    "replicas": 3,
    "readyReplicas": 2,
    "desiredReplicas": 3,
    "backlog": 7,
}

WORKER_POOL_CASES = {
    "no status yet": (pool(None), "Progressing", "Waiting for the operator"),
    "generation not observed": (pool({**POOL_READY, "observedGeneration": 1}), "Progressing", ""),
    "reconciling": (
        pool({"observedGeneration": 2, "conditions": kstatus("reconciling", "Scaling")}),
        "Progressing",
        "Scaling",
    ),
    "stalled": (
        pool({"observedGeneration": 2, "conditions": kstatus("stalled", "InvalidSpec", "bad")}),
        "Degraded",
        "InvalidSpec: bad",
    ),
    "ready while scaling": (pool(POOL_READY), "Healthy", "Scaling: scaling up to 3: 2 of 3"),
    "ready at zero": (
        pool({"observedGeneration": 2, "conditions": kstatus("ready", "ScaledToZero", "none")}),
        "Healthy",
        "ScaledToZero: none",
    ),
    "scaling limited is still healthy": (
        pool(
            {
                **POOL_READY,
                "conditions": [
                    *kstatus("ready", "Accepted"),
                    cond("ScalingLimited", "True", "AtMaxReplicas", "backlog wants 9"),
                ],
            }
        ),
        "Healthy",
        "AtMaxReplicas: backlog wants 9",
    ),
}


@pytest.mark.parametrize("case", sorted(WORKER_POOL_CASES))
def test_worker_pool_health(health: Health, case: str) -> None:
    body, expected, message = WORKER_POOL_CASES[case]
    status, text = health("WorkerPool", body)
    assert status == expected
    assert message in text


# Statuses written by the operator's own planners, not hand-made samples.

POOL_SPEC = {"image": "worker:1", "allowedTasks": ["beatkeeper.*"], "replicas": 1}


def planned_task(spec: dict[str, Any], *, pool_known: bool = True) -> dict[str, Any]:
    body = obj(None, **spec)
    body["metadata"]["creationTimestamp"] = "2026-03-01T11:00:00Z"
    observed = scheduledtasks.ObservedTask.from_body(body)
    plan = scheduledtasks.plan_scheduled_task(
        observed, parse_worker_pool(POOL_SPEC) if pool_known else None, pool_known, NOW
    )
    body["status"] = plan.status
    return body


@pytest.mark.parametrize(
    ("spec", "pool_known", "expected"),
    [
        ({}, True, "Healthy"),
        ({"suspend": True}, True, "Suspended"),
        ({"every": "0s"}, True, "Degraded"),
        ({"task": {"name": "other.task"}}, True, "Degraded"),
        ({}, False, "Progressing"),
    ],
    ids=["armed", "suspended", "invalid", "task-not-allowed", "pool-missing"],
)
def test_planned_scheduled_task_status(
    health: Health, spec: dict[str, Any], pool_known: bool, expected: str
) -> None:
    assert health("ScheduledTask", planned_task(spec, pool_known=pool_known))[0] == expected


@pytest.mark.parametrize(
    ("spec", "deployed", "expected"),
    [
        (POOL_SPEC, True, "Healthy"),
        (POOL_SPEC, False, "Progressing"),
        ({**POOL_SPEC, "pool": "gevent"}, False, "Degraded"),
    ],
    ids=["ready", "creating", "invalid"],
)
def test_planned_worker_pool_status(
    health: Health, spec: dict[str, Any], deployed: bool, expected: str
) -> None:
    body = pool(None)
    body["metadata"]["uid"] = "uid-p"
    body["spec"] = spec
    ref = PoolRef("team", "p", "uid-p")
    deployment = observed_deployment(ref, spec, spec["replicas"]) if deployed else None
    world = workerpools.PoolWorld(deployment=deployment)
    plan = workerpools.plan_worker_pool(workerpools.ObservedPool.from_body(body), NOW, world)
    body["status"] = plan.status
    assert health("WorkerPool", body)[0] == expected


def test_argocd_cm_patch_carries_the_scripts() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"]["name"] == "argocd-cm"
    for kind, script in SCRIPTS.items():
        key = f"resource.customizations.health.beatkeeper.dev_{kind}"
        assert patch["data"][key] == (ARGOCD / script).read_text(), f"{key} differs from {script}"
