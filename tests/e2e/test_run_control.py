"""Delete, cancel and run-now mean what they say, through the operator, for real.

The operator, beat and worker processes against the session's cluster and
Redis. A deleted ScheduledTask's queued runs never start (the running one
finishes); a cancel token stops the active run once, and the same token again
does nothing; a run-now whose publish fails is published once the fault is
gone, under the same run id, and runs once.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import redis
from e2e_helpers import apply, eventually, get_json, hostless_pool
from e2e_helpers import scheduled_task as task

from beatkeeper_core import contract, keys
from beatkeeper_devenv.kube import kubectl


def status(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    return get_json(kubeconfig, "st", name, "-n", namespace).get("status", {})


def counts(client: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def annotate(kubeconfig: Path, namespace: str, name: str, annotation: str, value: str) -> None:
    kubectl(
        kubeconfig, "annotate", "--overwrite", "st", name, "-n", namespace,
        f"beatkeeper.dev/{annotation}={value}",
    )  # fmt: skip


def test_a_deleted_tasks_queued_runs_never_start_and_the_running_one_finishes(
    kubeconfig: Path, namespace: str, operator: Any, beat: Any, workers: Any, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    apply(kubeconfig, namespace, hostless_pool())
    workers.start(namespace, BEATKEEPER_WORKER_CONCURRENCY="1", BEATKEEPER_WORKER_PREFETCH="1")
    key = f"{namespace}:del"
    apply(kubeconfig, namespace, task("del", every="1s",
                                      task={"name": "e2e.slow", "args": [key, 4.0]}))  # fmt: skip
    # One run executes; the next slots queue up behind it (one process, prefetch 1).
    queue = contract.queue_name(namespace, "p")
    eventually(lambda: client.llen(queue) >= 2, timeout=30)
    started_before = counts(client, f"{key}:started")
    assert len(started_before) == 1
    kubectl(kubeconfig, "delete", "st", "del", "-n", namespace, "--timeout=30s")

    def drained() -> bool:
        """the queued runs were delivered and dropped, none started"""
        stats = counts(client, keys.stats_key(queue))
        return client.llen(queue) == 0 and stats.get("dropped_deleted", 0) >= 2

    eventually(drained, timeout=60)
    (running,) = started_before
    eventually(lambda: counts(client, f"{key}:finished").get(running) == 1, timeout=30)
    assert counts(client, f"{key}:started") == started_before
    client.close()


def test_cancel_stops_the_active_run_once_per_token(
    kubeconfig: Path, namespace: str, operator: Any, workers: Any, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    apply(kubeconfig, namespace, hostless_pool())
    workers.start(namespace)
    key = f"{namespace}:cancel"
    apply(kubeconfig, namespace, task("long", at="2035-01-01T00:00:00Z",
                                      task={"name": "e2e.slow", "args": [key, 60.0]}))  # fmt: skip
    annotate(kubeconfig, namespace, "long", "run-now", "go")
    eventually(lambda: status(kubeconfig, namespace, "long").get("active"), timeout=30)
    annotate(kubeconfig, namespace, "long", "cancel", "stop-1")

    def cancelled() -> dict[str, Any] | None:
        """the run is Failed with reason Cancelled, and the token is recorded"""
        found = status(kubeconfig, namespace, "long")
        last = found.get("lastRun") or {}
        ok = last.get("state") == "Failed" and "Cancelled" in last.get("message", "") + last.get(
            "reason", ""
        )
        return found if ok and found.get("cancelToken") == "stop-1" else None

    found = eventually(cancelled, timeout=30)
    assert found["failed"] == 1
    assert not found.get("active")
    run_id = found["lastRun"]["id"]
    eventually(lambda: client.exists(f"{key}:started"), timeout=5)
    assert counts(client, f"{key}:finished") == {}
    # GitOps re-applies the same annotation: nothing more happens.
    annotate(kubeconfig, namespace, "long", "cancel", "stop-1")
    annotate(kubeconfig, namespace, "long", "run-now", "again")
    eventually(lambda: (status(kubeconfig, namespace, "long").get("lastRun") or {}).get("id")
               != run_id, timeout=30)  # fmt: skip
    time.sleep(3)  # resyncs pass: the old token is not acted on twice
    found = status(kubeconfig, namespace, "long")
    assert found["lastRun"]["state"] in ("Pending", "Running")
    events = get_json(kubeconfig, "events", "-n", namespace)["items"]
    assert sum(e["reason"] == "Cancelled" for e in events) == 1
    client.close()


def test_a_run_now_whose_publish_failed_is_published_later_once(
    kubeconfig: Path, namespace: str, operator: Any, workers: Any, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    apply(kubeconfig, namespace, hostless_pool())
    queue = contract.queue_name(namespace, "p")
    client.set(queue, "not a list")  # the queue key of the wrong type: every publish fails
    key = f"{namespace}:now"
    apply(kubeconfig, namespace, task("once", at="2035-01-01T00:00:00Z",
                                      task={"name": "e2e.count", "args": [key]}))  # fmt: skip
    token = uuid.uuid4().hex[:8]
    annotate(kubeconfig, namespace, "once", "run-now", token)
    guard = keys.run_now_key(
        get_json(kubeconfig, "st", "once", "-n", namespace)["metadata"]["uid"], token
    )
    eventually(lambda: client.exists(guard), timeout=30)  # a publish was tried
    time.sleep(3)  # a resync or more: still failing
    assert status(kubeconfig, namespace, "once").get("runNowToken") != token
    client.delete(queue)
    workers.start(namespace)

    def ran() -> dict[str, Any] | None:
        """the run-now run Succeeded and the token is recorded"""
        found = status(kubeconfig, namespace, "once")
        done = (found.get("lastRun") or {}).get("state") == "Succeeded"
        return found if done and found.get("runNowToken") == token else None

    found = eventually(ran, timeout=60)
    assert found["lastRun"]["id"].endswith(f"~{contract.run_now_tag(token)}")
    assert counts(client, key) == {found["lastRun"]["id"]: 1}
    client.close()
