"""Admission under bad input, at volume (issue 16, item 5).

Hypothesis feeds AdmissionReview bodies for both kinds (CREATE and UPDATE, the
scale subresource too) through `webhook.respond`, the function the HTTPS server
calls for each request. The specs are arbitrary JSON, objects with the kind's
field names and arbitrary values, and mutations of valid specs (the examples/
ones and one with every field set) at every field path the pydantic models
declare, with values at and beyond each bound and semantic strings (cron, zones,
durations, instants, task names, globs, hosts), so the draws reach the deep
checks rather than stopping at "spec is not an object".

Each answer is allow, or a deny whose message is exactly InvalidSpec's format
(`<path>: <reason>` joined by "; ") where each path names a field of the spec
that was sent (or a required one missing from it); never an exception, and
within the settings' deadline. Whatever is allowed is then planned as the
operator would: a ScheduledTask into its redbeat entry and status (and the
pre-warm slot of its pool), a WorkerPool into its Deployment and status, before
and after that Deployment exists. None of it may raise.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from beatkeeper.api.scheduledtask import TASK_NAME, ScheduledTaskSpec
from beatkeeper.api.validation import FieldError, InvalidSpec
from beatkeeper.api.workerpool import TASK_GLOB, WorkerPoolSpec
from beatkeeper.operator.admission import scheduled_task_errors, worker_pool_errors
from beatkeeper.operator.autoscaler import BacklogSample
from beatkeeper.operator.deployments import ObservedDeployment, build_worker_deployment
from beatkeeper.operator.runtime import pool_spec
from beatkeeper.operator.scheduledtasks import ObservedTask, plan_scheduled_task
from beatkeeper.operator.webhook import Known, respond
from beatkeeper.operator.workerpools import (
    NextSlots,
    ObservedPool,
    PoolWorld,
    plan_worker_pool,
    slot_source,
)
from beatkeeper_core import contract

# Deterministic for CI: the same draws on every run, nothing read from or written
# to an example database. The deadline is per example (one review, plus the plans
# of what it allows); the webhook configuration gives the apiserver 10 s.
FUZZ = settings(
    max_examples=500,
    deadline=dt.timedelta(milliseconds=500),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "team"
NOW = dt.datetime(2026, 3, 7, 12, 0, 0, tzinfo=dt.UTC)
CREATED = "2026-03-07T11:59:50Z"


def example_specs(kind: str) -> dict[str, dict[str, Any]]:
    """The examples/ objects of one kind, by name."""
    found = {}
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                found[doc["metadata"]["name"]] = doc["spec"]
    return found


EXAMPLE_POOLS = example_specs("WorkerPool")
FULL_TASK = {
    "schedule": "*/5 8-18 * * MON-FRI",
    "timeZone": "Europe/Berlin",
    "jitterSeconds": 20,
    "suspend": False,
    "workerPool": "default",
    "task": {"name": "beatkeeper.http", "args": [1, "two"], "kwargs": {"url": "http://x/"}},
    "retry": {
        "maxRetries": 2,
        "backoff": {"initialSeconds": 2, "factor": 2, "maxSeconds": 30},
        "jitter": True,
    },
    "timeouts": {"softSeconds": 8, "hardSeconds": 10},
    "concurrencyPolicy": "Forbid",
    "startingDeadlineSeconds": 30,
    "catchUp": {"windowSeconds": 3600, "maxRuns": 2},
    "historyLimit": 10,
    "failureThreshold": 3,
}
FULL_POOL = {
    "image": "registry.example/worker:1.2",
    "imagePullPolicy": "Always",
    "taskModules": ["myapp.tasks"],
    "allowedTasks": ["myapp.*", "beatkeeper.http"],
    "allowedHosts": ["169.254.169.254", "10.0.0.0/8", "metadata.internal"],
    "concurrency": 4,
    "pool": "threads",
    "prefetch": 2,
    "replicas": 2,
    "autoscaling": {
        "minReplicas": 1,
        "maxReplicas": 5,
        "targetPerReplica": 4,
        "activationBacklog": 3,
        "pollSeconds": 2,
        "scaleUp": {"stabilizationSeconds": 0, "maxStep": 2},
        "scaleDown": {"stabilizationSeconds": 60, "maxStep": 1},
        "prewarmSeconds": 15,
    },
    "template": {
        "resources": {"requests": {"cpu": "100m", "memory": 1024}, "limits": {"memory": "1Gi"}},
        "env": [{"name": "APP_MODE", "value": "batch"}],
        "envFrom": [{"configMapRef": {"name": "app-config"}}],
        "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}},
        "serviceAccountName": "reports-worker",
        "annotations": {"a": "b"},
        "labels": {"team": "finance"},
        "priorityClassName": "batch-low",
    },
    "terminationGracePeriodSeconds": 600,
    "brokerSecretRef": {"name": "redis-creds", "key": "broker"},
}
ONCE = {"at": "2030-01-01T09:00:00+02:00", "workerPool": "full", "task": {"name": "myapp.x"}}
TASK_BASES = [  # FULL_TASK last
    *example_specs("ScheduledTask").values(),
    ONCE,
    {"every": "1h", "suspend": True, "workerPool": "broken", "task": {"name": "app.x"}},
    {"schedule": "@daily", "workerPool": "missing", "task": {"name": "app.x"}},
    FULL_TASK,
]
ONE_OF = ("schedule", "every", "at")
POOL_BASES = [*EXAMPLE_POOLS.values(), FULL_POOL]  # FULL_POOL last

# What the operator's indexes hold: the example pools in the namespace (so a task's
# name is checked against its pool's allowedTasks), one stored invalid pool, the
# tasks on "default" (for the narrowed-allowedTasks warning) and what its workers
# register (for the not-registered warning).
POOLS: dict[tuple[str, str], Mapping[str, Any]] = {
    **{(NAMESPACE, name): spec for name, spec in EXAMPLE_POOLS.items()},
    (NAMESPACE, "broken"): {"image": "", "concurrency": 0},
    (NAMESPACE, "full"): FULL_POOL,
    ("elsewhere", "default"): {"image": "w:1", "allowedTasks": ["nothing"]},
}
TASKS = {
    (NAMESPACE, f"t{index}"): {
        "metadata": {"name": f"t{index}", "namespace": NAMESPACE},
        "spec": {"workerPool": "default", "every": "1h", "task": {"name": name}},
    }
    for index, name in enumerate(("beatkeeper.http", "beatkeeper_examples.tasks.flaky", "app.x"))
}
REGISTERED = {(NAMESPACE, "default"): ("beatkeeper.http", "beatkeeper.sleep")}
KNOWN = Known(pools=lambda: POOLS, tasks=lambda: TASKS, registered=lambda: REGISTERED)


# --- field paths of the models, and values at their bounds -------------------------------

FieldPath = tuple[str, ...]


def _unwrap(annotation: Any) -> list[Any]:
    """The members of a union (None dropped) with Annotated unwrapped."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    return [] if annotation is type(None) else [annotation]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for member in _unwrap(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _bounds(annotation: Any, metadata: list[Any]) -> list[Any]:
    """Values at and just past each bound the field declares."""
    many = any(typing.get_origin(member) is list for member in _unwrap(annotation))
    edges: list[Any] = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            edges += [item.ge - 1, item.ge]
        elif isinstance(item, annotated_types.Le):
            edges += [item.le, item.le + 1]
        elif isinstance(item, annotated_types.MaxLen):
            edges += [
                ["x"] * n if many else "x" * n for n in (item.max_length, item.max_length + 1)
            ]
        elif isinstance(item, annotated_types.MinLen):
            edges += [["x"] * n if many else "x" * n for n in (max(item.min_length - 1, 0),)]
    return edges


def field_paths(
    model: type[BaseModel], prefix: FieldPath = ()
) -> Iterator[tuple[FieldPath, list[Any]]]:
    """Every field path of the model (camelCase, as on the wire), with its edge values."""
    for name, info in model.model_fields.items():
        path = (*prefix, info.alias or name)
        yield path, _bounds(info.annotation, list(info.metadata))
        nested = _model_of(info.annotation)
        if nested is not None:
            yield from field_paths(nested, path)


TASK_PATHS = dict(field_paths(ScheduledTaskSpec))
POOL_PATHS = dict(field_paths(WorkerPoolSpec))

# --- values ------------------------------------------------------------------------------


def _weighted(options: list[st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A draw from one of `options`, each as likely as its share of the list (st.one_of
    weighs each distinct strategy alike)."""
    return st.sampled_from(options).flatmap(lambda option: option)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
LOOSE = st.sampled_from([None, True, 0, -1, 1, 1.5, 2**63, "", "x", [], {}, [1], {"a": 1}])

CRON_FIELD = st.one_of(
    st.sampled_from(
        [
            "*",
            "*/5",
            "0",
            "59",
            "60",
            "1-5",
            "5-1",
            "MON-FRI",
            "SUN",
            "JAN-DEC",
            "*/0",
            "0/15",
            "1,2,3",
            "L",
            "?",
            "29",
            "30",
            "31",
            "32",
            "7",
            "-1",
            "1-31/2",
            "FEB",
            "0-59/61",
        ]
    ),
    st.integers(0, 100).map(str),
    st.from_regex(r"\A[0-9*]{1,2}(-[0-9]{1,2})?(/[0-9]{1,3})?(,[0-9]{1,2})?\Z"),
)
CRONS = st.one_of(
    st.sampled_from(
        [
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
            "@reboot",
            "@every 5m",
            "0 0 30 2 *",
            "0 0 31 4 *",
            "0 0 29 2 *",
            "0 0 29 2 MON",
            "* * * * * *",
            "",
        ]
    ),
    st.lists(CRON_FIELD, min_size=4, max_size=6).map(" ".join),
    st.text(alphabet=" 0123456789*/,-?LW#@ADFJMNOSTaeinruy", max_size=30),
)
DURATIONS = st.one_of(
    st.sampled_from(["30s", "1h30m", "0s", "1s", "999999999999h", "1d", "5", "-5s", "1.5h"]),
    st.from_regex(r"\A([0-9]{1,13}h)?([0-9]{1,13}m)?([0-9]{1,13}s)?\Z"),
)
OFFSETS = st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
EDGE_INSTANTS = st.builds(  # the ends of the years 1 to 9999, seen from any offset
    "{}{}".format,
    st.sampled_from(["0001-01-01T00:00:00", "9999-12-31T23:59:59", "9999-12-31T23:59:59.999999"]),
    st.sampled_from(["Z", "+00:00", "+14:00", "-14:00", "+00:01", "-00:01"]),
)
INSTANTS = _weighted(
    [
        st.sampled_from(
            [
                "2030-01-01T00:00:00Z",
                "2020-01-01T00:00:00Z",
                "2026-03-07T11:59:59Z",
                "2030-01-01T00:00:00",
                "2030-13-01T00:00:00Z",
                "2030-01-01",
                "now",
            ]
        ),
        EDGE_INSTANTS,
        EDGE_INSTANTS,
        st.datetimes(timezones=OFFSETS).map(lambda t: t.isoformat()),
        st.datetimes().map(lambda t: t.isoformat()),
    ]
)
ZONES = st.sampled_from(
    [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",
        "Etc/GMT+14",
        "EST5EDT",
        "US/Pacific",
        "Factory",
        "localtime",
        "posixrules",
        "right/UTC",
        "posix/Europe/Berlin",
        "../etc/passwd",
        "zone.tab",
        "Europe/Nowhere",
        "",
        "Europe/",
    ]
)
TASK_NAMES = st.one_of(
    st.sampled_from(
        [
            "beatkeeper.http",
            "beatkeeper.sleep",
            "beatkeeper_examples.tasks.flaky",
            "app.x",
            "myapp.tasks:run",
            "x" * 200,
            "x" * 201,
            "1abc",
            "rm -rf",
            "a..b",
            "beatkeeper.",
        ]
    ),
    st.from_regex(TASK_NAME, fullmatch=True),
)
GLOBS = st.one_of(
    st.sampled_from(["*", "beatkeeper.*", "a[", "[abc]", "]x[", "!x", "[!a]*", "a b", ""]),
    st.from_regex(TASK_GLOB, fullmatch=True),
)
HOSTS = st.sampled_from(
    [
        "169.254.169.254",
        "10.0.0.0/8",
        "::1",
        "fe80::/10",
        "::ffff:10.0.0.1",
        "1.2.3.4/33",
        "metadata.google.internal",
        "a..b",
        "-x",
        "x" * 254,
        "[::1]",
        "",
        "host_name",
        ".",
    ]
)
POOL_NAMES = st.sampled_from(["default", "burst", "broken", "full", "missing", "Default", ""])
QUANTITIES = _weighted(
    [
        st.sampled_from(["100m", "1Gi", 1, 0, -1, "", "abc"]),
        st.sampled_from([1.5, None, True]),
        JSON,
    ]
)
ENV_ITEMS = st.one_of(
    st.fixed_dictionaries({"name": st.text(max_size=8) | JSON}, optional={"value": SCALARS}),
    st.dictionaries(st.sampled_from(["name", "value", "valueFrom"]), JSON, max_size=3),
    JSON,
)

SEMANTIC: dict[FieldPath, st.SearchStrategy[Any]] = {
    ("schedule",): CRONS,
    ("every",): DURATIONS,
    ("at",): INSTANTS,
    ("timeZone",): ZONES,
    ("workerPool",): POOL_NAMES,
    ("suspend",): st.booleans(),
    ("replicas",): st.integers(0, 3),
    ("autoscaling",): st.sampled_from(
        [None, {"maxReplicas": 2}, {"minReplicas": 1, "maxReplicas": 1}]
    ),
    ("task", "name"): TASK_NAMES,
    ("task", "args"): st.lists(JSON, max_size=3) | st.just([0] * 101),
    ("task", "kwargs"): st.dictionaries(st.text(max_size=8), JSON, max_size=3),
    ("allowedTasks",): st.lists(GLOBS, max_size=3),
    ("allowedHosts",): st.lists(HOSTS, max_size=3),
    ("taskModules",): st.lists(
        st.sampled_from(["app.tasks", "_x.y1", "my-app", "1x", ""]), max_size=3
    ),
    ("template", "env"): st.lists(ENV_ITEMS, max_size=3),
    ("template", "envFrom"): st.lists(JSON, max_size=2),
    ("template", "tolerations"): st.lists(JSON, max_size=2),
    ("template", "labels"): st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
    ("template", "annotations"): st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
    ("template", "nodeSelector"): st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
    ("template", "resources", "limits"): st.dictionaries(
        st.text(max_size=6), QUANTITIES, max_size=3
    ),
    ("template", "resources", "requests"): st.dictionaries(
        st.sampled_from(["cpu", "memory", "int", "str"]), QUANTITIES, max_size=3
    ),
    ("template", "serviceAccountName"): st.sampled_from(["sa", "Bad_SA", "a.b", "", 5, None]),
    ("brokerSecretRef", "name"): st.sampled_from(["redis", "a.b", "-x", "", None]),
}


def values_for(
    paths: dict[FieldPath, list[Any]], bases: list[dict[str, Any]], path: FieldPath
) -> st.SearchStrategy[Any]:
    """Mostly the field's semantic draws and the other bases' values (valid more often
    than not), then its bounds and any JSON at all."""
    seen = [value for base in bases if (value := _lookup(base, path)) is not None]
    options = [JSON, LOOSE]
    if seen:
        options += [st.sampled_from(seen)] * 2
    if paths[path]:
        options.append(st.sampled_from(paths[path]))
    if path in SEMANTIC:
        options += [SEMANTIC[path]] * 8
    return _weighted(options)


def _lookup(doc: Any, path: FieldPath) -> Any:
    """The value at `path`, None when there is none."""
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _put(doc: dict[str, Any], path: FieldPath, value: Any, full: dict[str, Any]) -> None:
    """Set `path`; a missing parent object is taken from `full` (valid, every field set)."""
    *parents, last = path
    for key in parents:
        if not isinstance(doc.get(key), dict):
            doc[key] = copy.deepcopy(full[key]) if isinstance(full.get(key), dict) else {}
        doc = doc[key]
        full = full.get(key) if isinstance(full.get(key), dict) else {}
    doc[last] = value


def _drop(doc: dict[str, Any], path: FieldPath) -> None:
    *parents, last = path
    for key in parents:
        inner = doc.get(key)
        if not isinstance(inner, dict):
            return
        doc = inner
    doc.pop(last, None)


@st.composite
def mutated(
    draw: st.DrawFn, bases: list[dict[str, Any]], paths: dict[FieldPath, list[Any]]
) -> dict[str, Any]:
    """A valid spec with a few fields set to other values, removed, or added beside."""
    spec = copy.deepcopy(draw(st.sampled_from(bases)))
    # Half of the changes go to the fields with semantic checks or that the planner
    # and the Deployment builder read beyond the model.
    names = st.sampled_from(sorted(paths))
    semantic = st.sampled_from([path for path in sorted(paths) if path in SEMANTIC])
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.one_of(names, semantic))
        change = draw(st.sampled_from(["set"] * 6 + ["drop", "extra"]))
        if change == "set":
            if path[0] in ONE_OF and draw(st.booleans()):  # keep exactly one schedule
                for other in ONE_OF:
                    spec.pop(other, None)
            value = copy.deepcopy(draw(values_for(paths, bases, path)))  # bases stay as they are
            _put(spec, path, value, bases[-1])
        elif change == "drop":
            _drop(spec, path)
        else:
            _put(spec, (*path[:-1], draw(st.text(max_size=8))), draw(JSON), bases[-1])
    return spec


def keyed(paths: dict[FieldPath, list[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the kind's top-level field names and any values."""
    top = sorted({path[0] for path in paths})
    return st.dictionaries(st.sampled_from(top) | st.text(max_size=8), JSON, max_size=6)


TASK_MUTATIONS = mutated(TASK_BASES, TASK_PATHS)
POOL_MUTATIONS = mutated(POOL_BASES, POOL_PATHS)


def specs(
    mutations: st.SearchStrategy[dict[str, Any]], paths: dict[FieldPath, list[Any]]
) -> st.SearchStrategy[Any]:
    """Mostly mutations of valid specs."""
    return _weighted([mutations] * 4 + [keyed(paths), JSON])


TASK_SPECS = specs(TASK_MUTATIONS, TASK_PATHS)
POOL_SPECS = specs(POOL_MUTATIONS, POOL_PATHS)


@st.composite
def reviews(
    draw: st.DrawFn,
    kind: str,
    spec_strategy: st.SearchStrategy[Any],
    old_strategy: st.SearchStrategy[dict[str, Any]],
) -> dict[str, Any]:
    """An AdmissionReview v1 request body as the apiserver sends it.

    The old spec is what the apiserver stored: it passed the CRD's structural schema,
    so it is an object, though maybe one the webhook would refuse (stored while it was
    down); the new spec is anything.
    """
    operation = draw(st.sampled_from(["CREATE", "UPDATE"]))
    name = draw(st.sampled_from(["default", "burst", "t0", "new"]))
    meta = {"name": name, "namespace": NAMESPACE}
    obj = {"apiVersion": "beatkeeper.dev/v1alpha1", "kind": kind, "metadata": meta}
    obj["spec"] = spec = draw(spec_strategy)
    request: dict[str, Any] = {
        "uid": draw(st.uuids()).hex,
        "kind": {"group": "beatkeeper.dev", "version": "v1alpha1", "kind": kind},
        "operation": operation,
        "namespace": NAMESPACE,
        "name": name,
        "object": obj,
    }
    if operation == "UPDATE":  # unchanged (a metadata-only update), or another one
        old = draw(st.one_of(st.just(copy.deepcopy(spec)), old_strategy))
        request["oldObject"] = {**obj, "spec": old}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


@st.composite
def scale_reviews(draw: st.DrawFn) -> dict[str, Any]:
    """`kubectl scale` on a WorkerPool: the scale subresource's review."""
    name = draw(st.sampled_from(["default", "burst", "full", "missing"]))
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": draw(JSON)}}
    request = {
        "uid": draw(st.uuids()).hex,
        "operation": "UPDATE",
        "subResource": "scale",
        "namespace": NAMESPACE,
        "name": name,
        "object": scale,
        "oldObject": scale,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


# --- what every answer must be -----------------------------------------------------------

_STEP = re.compile(r"\[(\d+)\]")


def _resolves(value: Any, rest: str, missing_ok: bool) -> bool:
    """Does `rest` (such as `.task.name` or `.env[0]`) lead to a value inside `value`?

    Tried against the keys actually there, so keys with dots in them resolve; the
    last step may name a key that is absent when the error says it is required.
    """
    if not rest:
        return True
    if isinstance(value, list) and (step := _STEP.match(rest)):
        index = int(step.group(1))
        return index < len(value) and _resolves(value[index], rest[step.end() :], missing_ok)
    if not isinstance(value, dict) or not rest.startswith("."):
        return False
    for key, item in value.items():
        after = rest[1 + len(key) :]
        here = rest[1:].startswith(key) and (not after or after[0] in ".[")
        if here and _resolves(item, after, missing_ok):
            return True
    return missing_ok and "." not in rest[1:] and "[" not in rest[1:]


def assert_names_fields(response: Mapping[str, Any], spec: Any, errors: list[FieldError]) -> None:
    """A deny: 422 Invalid, its message exactly InvalidSpec's, each error at a field."""
    assert response["allowed"] is False
    assert set(response) == {"allowed", "status", "uid"}
    status = response["status"]
    assert status == {"code": 422, "reason": "Invalid", "message": status["message"]}
    assert errors, f"denied, but no field error: {status['message']}"
    assert status["message"] == str(InvalidSpec(errors))
    assert status["message"] == "; ".join(f"{e.path}: {e.message}" for e in errors)
    for error in errors:
        assert error.message.strip(), error
        assert error.path == "spec" or error.path.startswith(("spec.", "spec[")), error
        # An unknown key is named as sent; a required field is named where it is missing
        # (no spec at all is an empty one).
        sent = {} if spec is None else spec
        assert _resolves(sent, error.path[len("spec") :], error.message == "is required"), (
            f"{error} does not name a field of the spec {json.dumps(spec)[:500]}"
        )


def _allowed(response: Mapping[str, Any]) -> bool:
    if response["allowed"] is True:
        assert "status" not in response
        assert all(
            isinstance(w, str) and w.startswith("spec.") for w in response.get("warnings", [])
        )
        return True
    return False


def _count(response: Mapping[str, Any], errors: list[FieldError]) -> None:
    """What the draws reach (`pytest --hypothesis-show-statistics`)."""
    if response["allowed"]:
        event("allowed" if not errors else "allowed: unchanged on update")
    for error in errors:
        if error.message == "is not a known field":
            event("refused: a field that is not known")
        else:
            event(f"refused at {_STEP.sub('[]', error.path)}")


def _answer(path: str, review: dict[str, Any]) -> dict[str, Any]:
    answer = respond(path, review, KNOWN)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response: dict[str, Any] = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert isinstance(response["allowed"], bool)
    json.dumps(answer)  # the server writes it as JSON
    return response


# --- what the operator does with what is allowed ------------------------------------------


def plan_task(name: str, spec: Any, admitted_by_validation: bool) -> None:
    meta = {
        "namespace": NAMESPACE,
        "name": name,
        "uid": f"uid-{name}",
        "generation": 2,
        "creationTimestamp": CREATED,
    }
    observed = ObservedTask.from_body({"metadata": meta, "spec": spec, "status": {}})
    raw_pool = POOLS.get((NAMESPACE, str(observed.spec.get("workerPool", ""))))
    plan = plan_scheduled_task(observed, pool_spec(raw_pool), raw_pool is not None, NOW)
    event(f"planned: {plan.health.state} {plan.health.reason}")
    json.dumps(plan.status)
    if admitted_by_validation:  # admission and the reconciler share the checks
        assert plan.health.reason != "InvalidSpec", plan.health
    if plan.definition is not None:  # what the redbeat store writes and beat reads back
        text = plan.definition.model_dump_json()
        assert contract.EntryDefinition.model_validate_json(text) == plan.definition
        plan.definition.next_for(plan.definition.first_slot(NOW)).model_dump_json()
    # The pool's pre-warm: the next slot of the tasks that target it.
    NextSlots().earliest([slot_source(NAMESPACE, name, meta, observed.spec)], NOW)


READY_FIELDS = ("replicas", "readyReplicas", "updatedReplicas")


def plan_pool(name: str, spec: Any, admitted_by_validation: bool) -> None:
    meta = {"namespace": NAMESPACE, "name": name, "uid": f"uid-{name}", "generation": 2}
    observed = ObservedPool.from_body({"metadata": meta, "spec": spec, "status": {}})
    sample = BacklogSample(queued=7, unacked=2, active=1)
    first = plan_worker_pool(observed, NOW, PoolWorld(backlog=sample))
    event(f"planned: {first.health.state} {first.health.reason}")
    json.dumps(first.status)
    if first.spec is None:
        assert not admitted_by_validation, first.health
        return
    manifest = build_worker_deployment(observed.ref, first.spec, first.status["desiredReplicas"])
    assert first.deployment == manifest
    json.dumps(manifest)  # applied server-side as JSON
    # Then the Deployment exists, rolled out, and the workers have registered tasks.
    body = copy.deepcopy(manifest)
    body["metadata"].update(uid="d-1", generation=1)
    replicas = manifest["spec"]["replicas"]
    body["status"] = {"observedGeneration": 1, **dict.fromkeys(READY_FIELDS, replicas)}
    seen = ObservedDeployment.from_body(body)
    world = PoolWorld(deployment=seen, backlog=sample, registered=("app.x",))
    then = plan_worker_pool(observed, NOW, world)
    event(f"planned, Deployment there: {then.health.state} {then.health.reason}")
    json.dumps(then.status)


# --- the properties ----------------------------------------------------------------------


def pinned(kind: str, spec: Any, operation: str = "CREATE") -> dict[str, Any]:
    """The review of one spec, for an `@example`; an UPDATE leaves the spec unchanged."""
    meta = {"name": "new", "namespace": NAMESPACE}
    obj = {"apiVersion": "beatkeeper.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}
    request = {"uid": "pinned", "operation": operation, "namespace": NAMESPACE, "object": obj}
    if operation == "UPDATE":
        request["oldObject"] = {**obj, "spec": copy.deepcopy(spec)}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


@FUZZ
@given(review=reviews("ScheduledTask", TASK_SPECS, TASK_MUTATIONS))
# Found by this test: a spec that is not an object raised AttributeError, or, unchanged
# by an update, in the metadata-only-update check; an empty one ([], 0, "") was taken
# for {} and refused at fields it cannot have (spec.workerPool: is required).
@example(review=pinned("ScheduledTask", "abc"))
@example(review=pinned("ScheduledTask", [["workerPool", "default"]], "UPDATE"))
@example(review=pinned("ScheduledTask", []))
# Found by this test: an `at` whose UTC instant falls outside years 1-9999 was
# admitted, and the planner raised OverflowError converting it to UTC.
@example(review=pinned("ScheduledTask", {**ONCE, "at": "9999-12-31T23:00:00-02:00"}))
@example(review=pinned("ScheduledTask", {**ONCE, "at": "0001-01-01T00:00:00+01:00"}))
def test_every_scheduled_task_review_is_an_allow_or_a_deny_naming_a_field(
    review: dict[str, Any],
) -> None:
    response = _answer("/scheduledtask", review)
    request = review["request"]
    spec = request["object"].get("spec")
    errors = scheduled_task_errors(NAMESPACE, spec, POOLS)
    _count(response, errors)
    if _allowed(response):
        plan_task(str(request.get("name") or "new"), spec, admitted_by_validation=not errors)
    else:
        assert_names_fields(response, spec, errors)


@FUZZ
@given(review=st.one_of(reviews("WorkerPool", POOL_SPECS, POOL_MUTATIONS), scale_reviews()))
# Found by this test: an env item whose name is not a string was admitted, and the
# Deployment builder raised TypeError (unhashable) comparing it with its own names.
@example(review=pinned("WorkerPool", {"image": "w:1", "template": {"env": [{"name": ["A"]}]}}))
# Found by this test: a quantity neither integer nor string was refused at
# `...limits.cpu.int` and `...limits.cpu.str`, fields that do not exist.
@example(
    review=pinned(
        "WorkerPool", {"image": "w:1", "template": {"resources": {"limits": {"cpu": [1]}}}}
    )
)
# Found by this test: a spec that is not an object, unchanged by an update, raised
# ValueError in the metadata-only-update check; 0 was refused at spec.image.
@example(review=pinned("WorkerPool", "replicas", "UPDATE"))
@example(review=pinned("WorkerPool", 0))
def test_every_worker_pool_review_is_an_allow_or_a_deny_naming_a_field(
    review: dict[str, Any],
) -> None:
    response = _answer("/workerpool", review)
    request = review["request"]
    if request.get("subResource") == "scale":  # refused at the Scale object's spec.replicas
        if not _allowed(response):
            assert response["status"]["code"] == 422, response
            assert response["status"]["message"].startswith("spec.replicas: "), response
        return
    spec = request["object"].get("spec")
    errors = worker_pool_errors(spec)
    _count(response, errors)
    if _allowed(response):
        plan_pool(str(request.get("name") or "new"), spec, admitted_by_validation=not errors)
    else:
        assert_names_fields(response, spec, errors)


def test_the_refusals_the_fuzzing_found_missing_say_what_is_wrong() -> None:
    def refusal(path: str, kind: str, spec: Any) -> str:
        response = _answer(path, pinned(kind, spec))
        assert response["allowed"] is False
        return str(response["status"]["message"])

    assert refusal("/scheduledtask", "ScheduledTask", "abc") == "spec: Input should be an object"
    assert refusal("/scheduledtask", "ScheduledTask", []) == "spec: Input should be an object"
    assert refusal("/workerpool", "WorkerPool", 0) == "spec: Input should be an object"
    late = {**ONCE, "at": "9999-12-31T23:00:00-02:00"}
    assert refusal("/scheduledtask", "ScheduledTask", late) == (
        'spec.at: "9999-12-31T23:00:00-02:00" is not between 0001-01-01T00:00:00Z and '
        "9999-12-31T23:59:59Z"
    )
    env = {"image": "w:1", "template": {"env": [{"name": ["A"]}, {"value": "x"}]}}
    assert refusal("/workerpool", "WorkerPool", env) == (
        "spec.template.env[0].name: must be a non-empty string; "
        "spec.template.env[1].name: is required"
    )
    quantity = {"image": "w:1", "template": {"resources": {"limits": {"cpu": [1]}}}}
    assert refusal("/workerpool", "WorkerPool", quantity) == (
        "spec.template.resources.limits.cpu: must be an integer or a string"
    )
