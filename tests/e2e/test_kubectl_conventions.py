"""What kubectl users see: aggregated events, `kubectl wait` on a run-now token,
`-o wide`, and the field manager of every write the operator makes.

The real kube-apiserver, the operator (kopf), beat, a worker process and Redis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e_helpers import apply, condition, eventually, get_json, hostless_pool
from e2e_helpers import scheduled_task as task

from beatkeeper_devenv.kube import kubectl

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def env(
    kubeconfig: Path, operator: Any, beat: Any, workers: Any, namespace: str, redis_url: str
) -> Any:
    apply(kubeconfig, namespace, hostless_pool())
    workers.start(namespace)
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def events_of(kubeconfig: Path, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in get_json(kubeconfig, "events", "-n", namespace)["items"]
        if e["involvedObject"]["name"] == name and e["reason"] == reason
    ]


def test_a_task_failing_again_and_again_has_one_event_whose_count_grows(
    kubeconfig: Path, namespace: str, env: redis.Redis
) -> None:
    apply(
        kubeconfig,
        namespace,
        task("broken", every="1s", task={"name": "e2e.fail"}, retry={"maxRetries": 0}),
    )

    def failed_often() -> dict[str, Any] | None:
        """the task failed 4 times"""
        found = get_json(kubeconfig, "st", "broken", "-n", namespace).get("status", {})
        return found if found.get("failed", 0) >= 4 else None

    eventually(failed_often, timeout=60)

    def aggregated() -> list[dict[str, Any]]:
        """one RunFailed event with count >= 3"""
        found = events_of(kubeconfig, namespace, "broken", "RunFailed")
        return found if found and max(e.get("count", 1) for e in found) >= 3 else []

    found = eventually(aggregated, timeout=30)
    assert len(found) == 1, [e["message"] for e in found]
    event = found[0]
    assert event["type"] == "Warning"
    assert event["message"].startswith("a run failed (RuntimeError)")
    annotations = event["metadata"]["annotations"]
    assert annotations["beatkeeper.dev/run-id"].startswith(f"{namespace}/broken@")
    assert annotations["beatkeeper.dev/message"] == "RuntimeError: always fails (attempt 1 of 1)"


def test_kubectl_wait_for_the_run_a_token_started(
    kubeconfig: Path, namespace: str, env: redis.Redis
) -> None:
    apply(
        kubeconfig,
        namespace,
        task("manual", every="1h", task={"name": "e2e.count", "args": [f"{namespace}:w"]}),
    )
    eventually(lambda: condition(get_json(kubeconfig, "st", "manual", "-n", namespace), "Ready"))
    kubectl(kubeconfig, "annotate", "st", "manual", "-n", namespace, "beatkeeper.dev/run-now=t-42")
    # The README's two-line recipe.
    for jsonpath in ("{.status.lastRun.token}=t-42", "{.status.lastRun.state}=Succeeded"):
        kubectl(
            kubeconfig,
            "wait",
            "st/manual",
            "-n",
            namespace,
            f"--for=jsonpath={jsonpath}",
            "--timeout=60s",
        )
    last = get_json(kubeconfig, "st", "manual", "-n", namespace)["status"]["lastRun"]
    assert last["trigger"] == "run-now"
    assert "~now-" in last["id"]


def test_wide_columns_and_field_managers(
    kubeconfig: Path, namespace: str, env: redis.Redis
) -> None:
    apply(
        kubeconfig, namespace, task("tick", every="1s", task={"name": "e2e.count", "args": ["k"]})
    )

    def ran() -> bool:
        """the task ran and its status says so"""
        found = get_json(kubeconfig, "st", "tick", "-n", namespace).get("status", {})
        return found.get("succeeded", 0) >= 1

    eventually(ran, timeout=30)
    wide = kubectl(kubeconfig, "get", "st", "tick", "-n", namespace, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    for column in ("LAST RUN", "ATTEMPTS", "REASON", "MESSAGE"):
        assert column in header
    assert f"{namespace}/tick@" in row
    pools = kubectl(kubeconfig, "get", "wp", "p", "-n", namespace, "-o", "wide").stdout
    assert "QUEUE" in pools.splitlines()[0]

    body = get_json(kubeconfig, "st", "tick", "-n", namespace, "--show-managed-fields")
    entries = body["metadata"]["managedFields"]
    ours = [e for e in entries if not e["manager"].startswith("kubectl")]
    assert {e["manager"] for e in ours} == {"beatkeeper"}, entries
    status_writers = {e["manager"] for e in entries if e.get("subresource") == "status"}
    assert status_writers == {"beatkeeper"}
    finalizer_writers = {
        e["manager"]
        for e in entries
        if "f:finalizers" in e.get("fieldsV1", {}).get("f:metadata", {})
    }
    assert finalizer_writers <= {"beatkeeper"}


def test_admission_warns_about_a_task_no_worker_registers_and_a_narrowed_pool(
    kubeconfig: Path, namespace: str, env: redis.Redis
) -> None:
    def registered() -> list[str]:
        """the pool's workers announced what they register"""
        found = get_json(kubeconfig, "wp", "p", "-n", namespace).get("status", {})
        return list(found.get("registeredTasks") or [])

    assert "e2e.count" in eventually(registered, timeout=30)
    typo = task("typo", every="1h", task={"name": "e2e.cuont"})
    warning = (
        "Warning: spec.task.name: 'e2e.cuont' is allowed by WorkerPool 'p' but none of its "
        "workers registers it"
    )

    def warned() -> bool:
        """the webhook's index has the pool's registered tasks (a server-side dry run)"""
        text = json.dumps(typo)
        dry = kubectl(kubeconfig, "apply", "-n", namespace, "--dry-run=server", "-f", "-",
                      stdin=text)  # fmt: skip
        return warning in dry.stderr

    eventually(warned, timeout=30)
    assert warning in apply(kubeconfig, namespace, typo).stderr
    fine = apply(kubeconfig, namespace, task("fine", every="1h", task={"name": "e2e.count"}))
    assert "Warning" not in fine.stderr

    narrowed = hostless_pool()
    narrowed["spec"]["allowedTasks"] = ["beatkeeper.*"]
    answer = apply(kubeconfig, namespace, narrowed)
    assert (
        "Warning: spec.allowedTasks: no longer allows the task of ScheduledTasks fine, typo on "
        "WorkerPool 'p'"
    ) in answer.stderr

    def stranded() -> bool:
        """the stranded task is Stalled, as the warning said"""
        found = get_json(kubeconfig, "st", "fine", "-n", namespace)
        return (condition(found, "Stalled") or {}).get("reason") == "InvalidSpec"

    eventually(stranded, timeout=30)
