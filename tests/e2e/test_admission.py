"""Bad input is refused at `kubectl apply` time with the field and the reason.

Each case applies a manifest through the real kube-apiserver, where the CRD
schema, CEL rules and the operator's validating webhook all take part, and
checks the refusal names the field and says why.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import apply, condition, eventually, get_json

from beatkeeper_devenv.kube import kubectl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

POOL: dict[str, Any] = {
    "apiVersion": "beatkeeper.dev/v1alpha1",
    "kind": "WorkerPool",
    "metadata": {"name": "p"},
    "spec": {"image": "worker:1", "allowedTasks": ["beatkeeper.*", "myapp.reports.*"]},
}
TASK: dict[str, Any] = {
    "apiVersion": "beatkeeper.dev/v1alpha1",
    "kind": "ScheduledTask",
    "metadata": {"name": "t"},
    "spec": {"every": "30s", "workerPool": "p", "task": {"name": "beatkeeper.sleep"}},
}


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    if value is _DELETE:
        doc.pop(last, None)
    else:
        doc[last] = value


_DELETE = object()


def manifest(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        _set(doc, dotted.replace("__", "."), value)
    return doc


def st(**changes: Any) -> dict[str, Any]:
    return manifest(TASK, **changes)


def wp(**changes: Any) -> dict[str, Any]:
    return manifest(POOL, **changes)


def cron(expression: str) -> dict[str, Any]:
    return st(spec__every=_DELETE, spec__schedule=expression)


# (id, manifest, field, reason): the refusal must contain both.
INVALID = [
    (
        "cron-step-zero",
        cron("*/0 * * * *"),
        "spec.schedule",
        '"*/0 * * * *": minute step 0 is not allowed; a step must be at least 1',
    ),
    (
        "cron-minute-60",
        cron("60 * * * *"),
        "spec.schedule",
        '"60 * * * *": minute 60 is out of range 0-59',
    ),
    (
        "cron-step-61",
        cron("*/61 * * * *"),
        "spec.schedule",
        '"*/61 * * * *": minute 61 is out of range 0-59',
    ),
    ("cron-hour-24", cron("0 24 * * *"), "spec.schedule", "hour 24 is out of range 0-23"),
    ("cron-dom-0", cron("0 0 0 * *"), "spec.schedule", "day-of-month 0 is out of range 1-31"),
    ("cron-month-13", cron("0 0 * 13 *"), "spec.schedule", "month 13 is out of range 1-12"),
    ("cron-dow-8", cron("0 0 * * 8"), "spec.schedule", "day-of-week 8 is out of range 0-7"),
    ("cron-4-fields", cron("* * * *"), "spec.schedule", "expected 5 fields"),
    ("cron-6-fields", cron("* * * * * *"), "spec.schedule", "got 6"),
    ("cron-unknown-macro", cron("@sometimes"), "spec.schedule", "unknown macro"),
    ("cron-reversed-range", cron("0 5-2 * * *"), "spec.schedule", "hour range 5-2 is reversed"),
    ("cron-garbage", cron("0 x * * *"), "spec.schedule", 'hour "x" is not a number'),
    (
        "cron-bad-month-name",
        cron("0 0 * FOO *"),
        "spec.schedule",
        'month "FOO" is not a month name',
    ),
    ("cron-never-fires", cron("0 0 30 2 *"), "spec.schedule", "never fires"),
    (
        "zone-unknown",
        st(spec__timeZone="Mars/Olympus"),
        "spec.timeZone",
        '"Mars/Olympus": unknown IANA time zone',
    ),
    ("zone-empty", st(spec__timeZone=""), "spec.timeZone", "at least 1 chars long"),
    ("every-zero", st(spec__every="0s"), "spec.every", '"0s": must be at least 1s'),
    ("every-garbage", st(spec__every="5x"), "spec.every", '"5x": not a duration'),
    ("every-fraction", st(spec__every="1.5s"), "spec.every", "not a duration"),
    ("every-negative", st(spec__every="-5s"), "spec.every", "not a duration"),
    (
        "schedule-and-every",
        st(spec__schedule="* * * * *"),
        "spec",
        "spec.schedule, spec.every and spec.at are mutually exclusive",
    ),
    ("every-and-at", st(spec__at="2030-01-01T00:00:00Z"), "spec", "mutually exclusive"),
    (
        "no-schedule",
        st(spec__every=_DELETE),
        "spec",
        "one of spec.schedule, spec.every or spec.at is required",
    ),
    (
        "at-without-offset",
        st(spec__every=_DELETE, spec__at="2030-01-01T00:00:00"),
        "spec.at",
        "must be of type date-time",
    ),
    ("at-garbage", st(spec__every=_DELETE, spec__at="tomorrow"), "spec.at", "date-time"),
    (
        "task-not-allowed",
        st(spec__task__name="myapp.admin.drop_tables"),
        "spec.task.name",
        '"myapp.admin.drop_tables" is not allowed by WorkerPool "p" '
        "(allowedTasks: beatkeeper.*, myapp.reports.*)",
    ),
    ("task-name-shell", st(spec__task__name="rm -rf /"), "spec.task.name", "should match"),
    ("task-missing", st(spec__task=_DELETE), "spec.task", "Required value"),
    ("pool-missing", st(spec__workerPool=_DELETE), "spec.workerPool", "Required value"),
    ("pool-bad-name", st(spec__workerPool="Bad_Pool"), "spec.workerPool", "should match"),
    (
        "retries-negative",
        st(spec__retry__maxRetries=-1),
        "spec.retry.maxRetries",
        "should be greater than or equal to 0",
    ),
    (
        "retries-too-many",
        st(spec__retry__maxRetries=101),
        "spec.retry.maxRetries",
        "should be less than or equal to 100",
    ),
    (
        "backoff-factor-below-1",
        st(spec__retry__backoff__factor=0.5),
        "spec.retry.backoff.factor",
        "should be greater than or equal to 1",
    ),
    (
        "backoff-max-below-initial",
        st(spec__retry__backoff__initialSeconds=60, spec__retry__backoff__maxSeconds=10),
        "spec.retry.backoff.maxSeconds",
        "maxSeconds must not be less than initialSeconds",
    ),
    (
        "backoff-max-over-a-day",
        st(spec__retry__backoff__maxSeconds=100000),
        "spec.retry.backoff.maxSeconds",
        "should be less than or equal to 86400",
    ),
    (
        "soft-not-below-hard",
        st(spec__timeouts={"softSeconds": 30, "hardSeconds": 30}),
        "spec.timeouts.softSeconds",
        "softSeconds must be less than hardSeconds",
    ),
    (
        "hard-zero",
        st(spec__timeouts={"hardSeconds": 0}),
        "spec.timeouts.hardSeconds",
        "should be greater than or equal to 1",
    ),
    (
        "concurrency-unknown",
        st(spec__concurrencyPolicy="Sometimes"),
        "spec.concurrencyPolicy",
        'supported values: "Allow", "Forbid", "Replace"',
    ),
    (
        "deadline-zero",
        st(spec__startingDeadlineSeconds=0),
        "spec.startingDeadlineSeconds",
        "should be greater than or equal to 1",
    ),
    (
        "jitter-over-an-hour",
        st(spec__jitterSeconds=4000),
        "spec.jitterSeconds",
        "should be less than or equal to 3600",
    ),
    (
        "history-over-50",
        st(spec__historyLimit=51),
        "spec.historyLimit",
        "should be less than or equal to 50",
    ),
    (
        "catch-up-negative",
        st(spec__catchUp={"maxRuns": -1}),
        "spec.catchUp.maxRuns",
        "should be greater than or equal to 0",
    ),
    ("suspend-string", st(spec__suspend="yes"), "spec.suspend", "must be of type boolean"),
    ("unknown-field", st(spec__scheduel="* * * * *"), "spec.scheduel", "unknown field"),
    (
        "pool-min-above-max",
        wp(spec__autoscaling={"minReplicas": 5, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
        "minReplicas must not be greater than maxReplicas",
    ),
    (
        "pool-max-missing",
        wp(spec__autoscaling={"minReplicas": 0}),
        "spec.autoscaling.maxReplicas",
        "Required value",
    ),
    (
        "pool-concurrency-zero",
        wp(spec__concurrency=0),
        "spec.concurrency",
        "should be greater than or equal to 1",
    ),
    (
        "pool-type-gevent",
        wp(spec__pool="gevent"),
        "spec.pool",
        'supported values: "prefork", "threads"',
    ),
    ("pool-image-missing", wp(spec__image=_DELETE), "spec.image", "Required value"),
    (
        "pool-module-dash",
        wp(spec__taskModules=["my-app.tasks"]),
        "spec.taskModules[0]",
        "should match",
    ),
    (
        "pool-host-garbage",
        wp(spec__allowedHosts=["not a host!"]),
        "spec.allowedHosts[0]",
        '"not a host!" is not a host name, an IP address or a network',
    ),
    (
        "pool-glob-unbalanced",
        wp(spec__allowedTasks=["myapp.[abc"]),
        "spec.allowedTasks[0]",
        "unbalanced [ ] group",
    ),
    (
        "pool-pull-policy",
        wp(spec__imagePullPolicy="Sometimes"),
        "spec.imagePullPolicy",
        "supported values",
    ),
    (
        "pool-replicas-negative",
        wp(spec__replicas=-1),
        "spec.replicas",
        "should be greater than or equal to 0",
    ),
    (
        "pool-poll-zero",
        wp(spec__autoscaling={"maxReplicas": 2, "pollSeconds": 0}),
        "spec.autoscaling.pollSeconds",
        "should be greater than or equal to 1",
    ),
]


@pytest.fixture
def pool_namespace(kubeconfig: Path, operator: Any, namespace: str) -> str:
    apply(kubeconfig, namespace, POOL)
    return namespace


def test_enough_invalid_cases() -> None:
    assert len(INVALID) >= 40
    assert len({case[0] for case in INVALID}) == len(INVALID)


@pytest.mark.parametrize(
    ("manifest_", "field", "reason"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_manifest_is_refused(
    kubeconfig: Path, pool_namespace: str, manifest_: dict[str, Any], field: str, reason: str
) -> None:
    result = apply(kubeconfig, pool_namespace, manifest_, check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(manifest_)}"
    assert field in result.stderr, result.stderr
    assert reason in result.stderr, result.stderr
    kind = manifest_["kind"].lower() + "s"
    assert kubectl(kubeconfig, "get", kind, "-n", pool_namespace, "-o", "name").stdout.count(
        "/"
    ) == (1 if kind == "workerpools" else 0)


def test_examples_are_accepted(kubeconfig: Path, operator: Any, namespace: str) -> None:
    documents = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    pools = [d for d in documents if d["kind"] == "WorkerPool"]
    tasks = [d for d in documents if d["kind"] == "ScheduledTask"]
    assert pools
    assert tasks
    for doc in pools + tasks:
        apply(kubeconfig, namespace, doc)
    names = kubectl(kubeconfig, "get", "st,wp", "-n", namespace, "-o", "name").stdout.split()
    assert len(names) == len(pools) + len(tasks)


def test_printer_columns(kubeconfig: Path, operator: Any, pool_namespace: str) -> None:
    apply(kubeconfig, pool_namespace, TASK)
    eventually(lambda: condition(get_json(kubeconfig, "st", "t", "-n", pool_namespace), "Ready"))
    table = kubectl(kubeconfig, "get", "st,wp", "-n", pool_namespace).stdout
    header_st, header_wp = [line for line in table.splitlines() if line.startswith("NAME")]
    for column in ("SCHEDULE", "SUSPEND", "POOL", "LAST", "LAST SCHEDULE", "NEXT", "READY", "AGE"):
        assert column in header_st
    for column in ("DESIRED", "READY", "BACKLOG", "ACTIVE", "MIN", "MAX", "AGE"):
        assert column in header_wp
    assert "every 30s" in table


def test_replicas_beside_autoscaling_is_admitted_with_a_warning(
    kubeconfig: Path, operator: Any, namespace: str
) -> None:
    autoscaled = wp(metadata__name="auto", spec__replicas=2, spec__autoscaling={"maxReplicas": 3})
    result = apply(kubeconfig, namespace, autoscaled)
    assert "Warning: spec.replicas: ignored while spec.autoscaling is set" in result.stderr


def test_kubectl_scale_on_an_autoscaled_pool_is_refused_and_works_otherwise(
    kubeconfig: Path, operator: Any, namespace: str
) -> None:
    apply(kubeconfig, namespace, wp(metadata__name="auto", spec__autoscaling={"maxReplicas": 3}))
    apply(kubeconfig, namespace, wp(metadata__name="manual", spec__replicas=1))

    def refused() -> str:
        """kubectl scale on the autoscaled pool is refused (once the webhook knows the pool)"""
        result = kubectl(
            kubeconfig, "scale", "wp/auto", "-n", namespace, "--replicas=5", check=False
        )
        return result.stderr if result.returncode != 0 else ""

    message = eventually(refused, timeout=15)
    assert "spec.replicas: WorkerPool" in message
    assert "spec.autoscaling.minReplicas" in message
    kubectl(kubeconfig, "scale", "wp/manual", "-n", namespace, "--replicas=0")
    assert get_json(kubeconfig, "wp", "manual", "-n", namespace)["spec"]["replicas"] == 0


@pytest.mark.parametrize(
    ("kind", "field", "expected"),
    [
        ("scheduledtask.spec.retry", "maxRetries", "at most maxRetries+1 attempts"),
        ("scheduledtask.spec.retry.backoff", "factor", "Default: 2.0"),
        ("workerpool.spec.autoscaling", "prewarmSeconds", "before the next scheduled run"),
        ("workerpool.spec.autoscaling", "maxReplicas", "-required-"),
    ],
)
def test_kubectl_explain_teaches_the_api(
    kubeconfig: Path, crds: Path, kind: str, field: str, expected: str
) -> None:
    def explained() -> str:
        """kubectl explain answers from the published OpenAPI"""
        result = kubectl(kubeconfig, "explain", kind, check=False)
        return result.stdout if result.returncode == 0 else ""

    text = " ".join(eventually(explained, timeout=30).split())
    assert field in text
    assert expected in text


def test_a_pool_without_allowed_tasks_admits_only_its_modules_and_the_builtins(
    kubeconfig: Path, operator: Any, namespace: str
) -> None:
    apply(
        kubeconfig, namespace, wp(spec__allowedTasks=_DELETE, spec__taskModules=["myapp.reports"])
    )

    def refused() -> str:
        """a task outside the pool's modules is refused (once the webhook knows the pool)"""
        result = apply(kubeconfig, namespace, st(spec__task__name="myapp.admin.drop"), check=False)
        return result.stderr if result.returncode != 0 else ""

    message = eventually(refused, timeout=15)
    assert (
        'spec.task.name: "myapp.admin.drop" is not allowed by WorkerPool "p" '
        "(allowedTasks: myapp.reports.*, beatkeeper.http, beatkeeper.sleep)"
    ) in message
    for name in ("myapp.reports.daily", "beatkeeper.http"):
        apply(
            kubeconfig, namespace, st(metadata__name=name.replace(".", "-"), spec__task__name=name)
        )

    def allowed_in_pods() -> str:
        """the worker Deployment exists; its pods get the same list to enforce"""
        found = kubectl(
            kubeconfig, "get", "deploy/p-workers", "-n", namespace, "-o", "json", check=False
        )
        if found.returncode != 0:
            return ""
        container = json.loads(found.stdout)["spec"]["template"]["spec"]["containers"][0]
        return next(e["value"] for e in container["env"] if e["name"] == "BEATKEEPER_ALLOWED_TASKS")

    assert eventually(allowed_in_pods) == "myapp.reports.*,beatkeeper.http,beatkeeper.sleep"
