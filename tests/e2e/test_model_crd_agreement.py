"""Property: the pydantic models and the CRDs (schema + CEL, in the real apiserver) agree.

Hypothesis draws specs around every bound, enum and exclusivity rule the
schema expresses; for each one the apiserver's verdict (server-side dry run)
must equal the model's. Semantic fields (cron, zone, duration) stay valid here,
so the webhook, which shares the model, cannot decide the outcome alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as s

from beatkeeper.api.validation import InvalidSpec, parse_scheduled_task, parse_worker_pool
from beatkeeper_devenv.kube import kubectl

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def within(low: int, high: int) -> s.SearchStrategy[int]:
    return s.sampled_from([low, high]) | s.integers(low, high)


def edges(low: int, high: int) -> s.SearchStrategy[Any]:
    """Values at and just outside [low, high], and wrong types."""
    return s.sampled_from([low - 1, low, high, high + 1, "3", None, True, 2.5])


# field path -> (valid values, edge values). A drawn spec takes valid values for
# some fields and, half of the time, one edge value, so both verdicts are common
# and each refusal is pinned to one rule.
TASK_FIELDS: dict[str, tuple[s.SearchStrategy[Any], s.SearchStrategy[Any]]] = {
    "workerPool": (s.sampled_from(["pool", "a" * 63]), s.sampled_from(["Bad_Pool", "a" * 64, ""])),
    "task.name": (
        s.sampled_from(["beatkeeper.sleep", "app.tasks:run", "x" * 200]),
        s.sampled_from(["rm -rf", "", "x" * 201, "1abc"]),
    ),
    "task.args": (s.lists(s.integers(), max_size=3), s.just("not a list")),
    "timeZone": (s.sampled_from(["UTC", "Europe/Berlin"]), s.sampled_from(["", "x" * 65])),
    "jitterSeconds": (within(0, 3600), edges(0, 3600)),
    "suspend": (s.booleans(), s.sampled_from(["yes", 1, None])),
    "concurrencyPolicy": (
        s.sampled_from(["Allow", "Forbid", "Replace"]),
        s.sampled_from(["allow", "", "Never"]),
    ),
    "startingDeadlineSeconds": (within(1, 86400), edges(1, 86400)),
    "historyLimit": (within(0, 50), edges(0, 50)),
    "retry.maxRetries": (within(0, 100), edges(0, 100)),
    "retry.jitter": (s.booleans(), s.just("no")),
    "retry.backoff.initialSeconds": (
        s.sampled_from([0, 0.5, 1, 30]),
        s.sampled_from([-1, 86401, "1"]),
    ),
    "retry.backoff.factor": (s.sampled_from([1, 1.5, 2, 10]), s.sampled_from([0.5, 10.5, "2"])),
    "retry.backoff.maxSeconds": (
        s.sampled_from([30, 600, 86400]),
        s.sampled_from([-1, 0.25, 86401]),
    ),
    "timeouts.softSeconds": (within(1, 100), edges(1, 86400)),
    "timeouts.hardSeconds": (within(101, 86400), s.sampled_from([0, 86401, 50, "9"])),
    "catchUp.windowSeconds": (within(0, 31 * 86400), edges(0, 31 * 86400)),
    "catchUp.maxRuns": (within(0, 100), edges(0, 100)),
    "every": (s.sampled_from(["30s", "1h30m"]), s.sampled_from([5, None])),
}

POOL_FIELDS: dict[str, tuple[s.SearchStrategy[Any], s.SearchStrategy[Any]]] = {
    "image": (s.sampled_from(["worker:1", "r.io/w@sha256:abc"]), s.sampled_from(["", None, 3])),
    "imagePullPolicy": (s.sampled_from(["Always", "IfNotPresent", "Never"]), s.just("always")),
    "taskModules": (
        s.lists(s.sampled_from(["app.tasks", "_x.y1"]), max_size=2),
        s.sampled_from([["my-app"], ["1x"], "app.tasks"]),
    ),
    "allowedTasks": (
        s.lists(s.sampled_from(["app.*", "beatkeeper.http"]), min_size=1, max_size=2),
        s.sampled_from([[], ["a b"], "app.*"]),
    ),
    "concurrency": (within(1, 256), edges(1, 256)),
    "pool": (s.sampled_from(["prefork", "threads"]), s.sampled_from(["gevent", ""])),
    "prefetch": (within(1, 100), edges(1, 100)),
    "replicas": (within(0, 1000), edges(0, 1000)),
    "terminationGracePeriodSeconds": (within(0, 86400), edges(0, 86400)),
    "autoscaling.minReplicas": (within(0, 5), edges(0, 1000)),
    "autoscaling.maxReplicas": (within(5, 1000), s.sampled_from([0, 1001, "5", 4])),
    "autoscaling.targetPerReplica": (within(1, 10000), edges(1, 10000)),
    "autoscaling.pollSeconds": (within(1, 300), edges(1, 300)),
    "autoscaling.prewarmSeconds": (within(0, 3600), edges(0, 3600)),
    "autoscaling.scaleDown.maxStep": (within(1, 1000), edges(1, 1000)),
}


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    doc[last] = value


@s.composite
def specs(
    draw: s.DrawFn,
    base: dict[str, Any],
    fields: dict[str, tuple[s.SearchStrategy[Any], s.SearchStrategy[Any]]],
) -> dict[str, Any]:
    spec = json.loads(json.dumps(base))
    for path in draw(s.lists(s.sampled_from(sorted(fields)), unique=True, max_size=5)):
        _put(spec, path, draw(fields[path][0]))
    if draw(s.booleans()):
        path = draw(s.sampled_from(sorted(fields)))
        _put(spec, path, draw(fields[path][1]))
    return spec


schedule_choice = s.sampled_from(
    [
        {"every": "30s"},
        {"schedule": "*/5 * * * *"},
        {"at": "2030-01-01T00:00:00+02:00"},
        {"schedule": "@daily", "every": "30s"},
        {"every": "30s", "at": "2030-01-01T00:00:00Z"},
        {},
    ]
)


def model_accepts(kind: str, spec: dict[str, Any]) -> bool:
    parse = parse_scheduled_task if kind == "ScheduledTask" else parse_worker_pool
    try:
        parse(spec)
    except InvalidSpec:
        return False
    return True


def apiserver_accepts(
    kubeconfig: Path, namespace: str, kind: str, spec: dict[str, Any]
) -> tuple[bool, str]:
    body = {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": f"x{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "spec": spec,
    }
    result = kubectl(
        kubeconfig, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(body), check=False
    )
    return result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def property_namespace(kubeconfig: Path, operator: Any) -> Iterator[str]:
    name = f"prop-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", name)
    yield name
    kubectl(kubeconfig, "delete", "namespace", name, "--wait=false")


@EXAMPLES
@given(
    spec=s.tuples(
        schedule_choice, specs({"workerPool": "pool", "task": {"name": "app.run"}}, TASK_FIELDS)
    ).map(lambda pair: {**pair[0], **pair[1]})
)
def test_scheduled_task_model_and_crd_agree(
    kubeconfig: Path, property_namespace: str, spec: dict[str, Any]
) -> None:
    accepted, why = apiserver_accepts(kubeconfig, property_namespace, "ScheduledTask", spec)
    event("accepted" if accepted else "refused")
    assert accepted == model_accepts("ScheduledTask", spec), f"{json.dumps(spec)}\n{why}"


@EXAMPLES
@given(spec=specs({"image": "worker:1"}, POOL_FIELDS))
def test_worker_pool_model_and_crd_agree(
    kubeconfig: Path, property_namespace: str, spec: dict[str, Any]
) -> None:
    accepted, why = apiserver_accepts(kubeconfig, property_namespace, "WorkerPool", spec)
    event("accepted" if accepted else "refused")
    assert accepted == model_accepts("WorkerPool", spec), f"{json.dumps(spec)}\n{why}"
