"""One object's trouble stays with that object, through the real operator.

Three faults confined to one ScheduledTask each, all at once and beside a
healthy one: a ValidatingAdmissionPolicy that refuses every status write of
`refused`; a redbeat key of the wrong type where `wrongtype`'s entry belongs;
a stored status of `corrupt` that the run-record folding cannot read. Each
gets its reason (a condition where its status can be written, a Warning event
once), is retried with a backoff, and has its run records parked once they
cannot be applied; the healthy object's status keeps moving all along, and the
operator's /healthz counts what was parked. Then a notice from beat (an entry
it could not plan) becomes a Warning event on its object.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e_helpers import apply, condition, eventually, get_json, hostless_pool

from beatkeeper_core import contract, keys
from beatkeeper_devenv.kube import kubectl


def ticking(name: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name},
        "spec": {"every": "1s", "workerPool": "p", "task": {"name": "e2e.count", "args": [key]}},
    }


def refuse_status_writes(namespace: str, name: str) -> list[dict[str, Any]]:
    policy = f"refuse-status-{namespace}"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["beatkeeper.dev"],
                            "apiVersions": ["*"],
                            "operations": ["UPDATE"],
                            "resources": ["scheduledtasks/status"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": f"object.metadata.name != '{name}'",
                        "message": "this object's status is refused (a test's fault)",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    ]


@pytest.fixture
def faults(kubeconfig: Path, namespace: str, redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    policy = refuse_status_writes(namespace, "refused")
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps({"kind": "List",
            "apiVersion": "v1", "items": policy}))  # fmt: skip
    client.set(keys.redbeat_key(namespace, "wrongtype"), "a string, not an entry")
    yield client
    for item in policy:
        kubectl(kubeconfig, "delete", item["kind"].lower(), item["metadata"]["name"],
                "--ignore-not-found")  # fmt: skip
    client.delete(keys.redbeat_key(namespace, "wrongtype"))
    client.close()


def status(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    return get_json(kubeconfig, "st", name, "-n", namespace).get("status", {})


def warnings(kubeconfig: Path, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    items = get_json(kubeconfig, "events", "-n", namespace)["items"]
    return [
        e
        for e in items
        if e["involvedObject"]["name"] == name and e["reason"] == reason and e["type"] == "Warning"
    ]


def parked(client: redis.Redis, namespace: str, name: str) -> int:
    entries = client.xrange(keys.PARKED_STREAM)
    return sum(
        1
        for _id, fields in entries  # type: ignore[union-attr]
        if json.loads(fields[b"record"])["run_id"].startswith(f"{namespace}/{name}@")
    )


def test_each_objects_trouble_stays_its_own_and_the_others_keep_moving(
    kubeconfig: Path,
    namespace: str,
    operator: Any,
    beat: Any,
    workers: Any,
    faults: redis.Redis,
) -> None:
    client = faults
    apply(kubeconfig, namespace, hostless_pool())
    workers.start(namespace)
    for name in ("ok", "refused", "wrongtype"):
        apply(kubeconfig, namespace, ticking(name, f"{namespace}:{name}"))
    # Suspended until its stored status is made unreadable, so no run of it was seen yet.
    corrupt = ticking("corrupt", f"{namespace}:corrupt")
    corrupt["spec"]["suspend"] = True
    apply(kubeconfig, namespace, corrupt)
    eventually(lambda: status(kubeconfig, namespace, "corrupt").get("observedGeneration"), 30)
    kubectl(
        kubeconfig, "patch", "st", "corrupt", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"active": ["not a run id"]}}),
    )  # fmt: skip
    kubectl(
        kubeconfig, "patch", "st", "corrupt", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"suspend": False}}),
    )  # fmt: skip

    # The entry that cannot be written: Stalled, with its reason, one event.
    def stalled() -> dict[str, Any] | None:
        found = condition({"status": status(kubeconfig, namespace, "wrongtype")}, "Stalled")
        return found if found and found["status"] == "True" else None

    found = eventually(stalled, timeout=30)
    assert found["reason"] == "EntryWriteFailed"
    assert "WRONGTYPE" in found["message"]

    # The refused status and the unreadable one: their records are parked, each once.
    eventually(lambda: warnings(kubeconfig, namespace, "refused", "StatusWriteFailed"), 30)
    eventually(lambda: parked(client, namespace, "refused"), timeout=60)
    eventually(lambda: parked(client, namespace, "corrupt"), timeout=60)
    for name in ("refused", "corrupt"):
        eventually(lambda name=name: warnings(kubeconfig, namespace, name, "RunRecordsParked"), 30)
    with urllib.request.urlopen(operator.healthz, timeout=10) as response:
        health = json.loads(response.read())
    assert health["objectsInTrouble"]["parkedRunRecords"] >= 2
    assert all(loop["running"] for loop in health["loops"].values())

    # Meanwhile the healthy object's status kept moving, and keeps moving.
    before = status(kubeconfig, namespace, "ok")["succeeded"]
    assert before >= 5
    eventually(lambda: status(kubeconfig, namespace, "ok")["succeeded"] >= before + 3, 20)
    time.sleep(2)  # more retries of the troubled ones: their warnings stay single
    assert len(warnings(kubeconfig, namespace, "wrongtype", "EntryWriteFailed")) == 1
    assert len(warnings(kubeconfig, namespace, "refused", "StatusWriteFailed")) == 1


def test_a_notice_from_beat_becomes_a_warning_on_its_object(
    kubeconfig: Path, namespace: str, operator: Any, redis_url: str
) -> None:
    apply(kubeconfig, namespace, hostless_pool())
    apply(kubeconfig, namespace, ticking("planless", f"{namespace}:planless"))
    notice = contract.ObjectNotice(
        namespace=namespace,
        name="planless",
        reason="EntryPlanningFailed",
        message="beat cannot plan this schedule's next run (a test's notice)",
        time=dt.datetime.now(dt.UTC),
    )
    client = redis.Redis.from_url(redis_url)
    # Appended exactly as beat appends it (beatkeeper_beat.scheduler.Firer._report).
    from beatkeeper_core.runs import RunRegistry

    RunRegistry(client, lease_seconds=15, retention_seconds=60, records_maxlen=1000).append_notice(
        notice
    )
    found = eventually(
        lambda: warnings(kubeconfig, namespace, "planless", "EntryPlanningFailed"), 30
    )
    assert "a test's notice" in found[0]["message"]
    client.close()
