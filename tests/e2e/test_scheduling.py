"""ScheduledTask -> redbeat entry -> beat -> worker -> run records -> status, for real.

The real kube-apiserver, the operator process (kopf), Redis, `beatkeeper beat`
and `beatkeeper-worker` processes; nothing mocked. Resync is 2 s here.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e_helpers import apply, condition, eventually, get_json
from e2e_helpers import scheduled_task as task

from beatkeeper_core import contract, keys
from beatkeeper_devenv.kube import kubectl

RESYNC = 2.0


def pool(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": {"image": "worker:1", "allowedTasks": ["beatkeeper.*", "e2e.*"]},
    }


def records(client: redis.Redis, namespace: str, name: str) -> list[contract.RunRecord]:
    prefix = f"{namespace}/{name}@"
    found = []
    for record in contract.stream_records(client.xrange(keys.RUN_RECORDS_STREAM)):  # type: ignore[arg-type]
        if record.run_id.startswith(prefix):
            found.append(record)
    return found


def status(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    return get_json(kubeconfig, "st", name, "-n", namespace).get("status", {})


@pytest.fixture
def env(
    kubeconfig: Path, operator: Any, beat: Any, workers: Any, namespace: str, redis_url: str
) -> Any:
    """A namespace with pool `p`, one worker process for it, beat and the operator."""
    apply(kubeconfig, namespace, pool(namespace))
    workers.start(namespace)
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_every_2s_runs_within_3s_and_status_tells_the_truth(
    kubeconfig: Path, namespace: str, env: redis.Redis
) -> None:
    applied = dt.datetime.now(dt.UTC)
    apply(
        kubeconfig, namespace, task("tick", every="2s", task={"name": "e2e.count", "args": ["k"]})
    )

    def first_start() -> contract.RunRecord | None:
        """the first run started"""
        return next((r for r in records(env, namespace, "tick") if r.state == "Running"), None)

    started = eventually(first_start, timeout=15)
    assert (started.time - applied).total_seconds() < 3.0, (
        f"first run started {started.time - applied} after apply"
    )

    def succeeded_with_next() -> dict[str, Any] | None:
        """kubectl get st shows Last=Succeeded and a Next time"""
        found = status(kubeconfig, namespace, "tick")
        ok = found.get("lastRun", {}).get("state") == "Succeeded" and found.get("nextScheduleTime")
        return found if ok else None

    found = eventually(succeeded_with_next, timeout=20)
    assert condition({"status": found}, "Ready")["status"] == "True"  # type: ignore[index]
    assert found["succeeded"] >= 1
    assert found["lastSuccessfulTime"]
    table = kubectl(kubeconfig, "get", "st", "tick", "-n", namespace).stdout
    assert "Succeeded" in table
    assert "every 2s" in table
    # Next moves on as runs happen.
    first_next = found["nextScheduleTime"]
    eventually(lambda: status(kubeconfig, namespace, "tick")["nextScheduleTime"] != first_next, 10)


def test_edit_suspend_and_delete(kubeconfig: Path, namespace: str, env: redis.Redis) -> None:
    apply(
        kubeconfig, namespace, task("edit", every="1h", task={"name": "e2e.count", "args": ["k"]})
    )
    eventually(lambda: condition(get_json(kubeconfig, "st", "edit", "-n", namespace), "Ready"), 15)
    assert records(env, namespace, "edit") == []

    # Editing the schedule takes effect at once.
    apply(
        kubeconfig, namespace, task("edit", every="1s", task={"name": "e2e.count", "args": ["k"]})
    )
    eventually(
        lambda: len([r for r in records(env, namespace, "edit") if r.state == "Succeeded"]) >= 2, 15
    )

    # Suspend stops new runs.
    apply(
        kubeconfig,
        namespace,
        task("edit", every="1s", suspend=True, task={"name": "e2e.count", "args": ["k"]}),
    )

    def suspended() -> bool:
        """Ready=True with reason Suspended and no next time"""
        found = status(kubeconfig, namespace, "edit")
        ready = condition({"status": found}, "Ready") or {}
        return ready.get("reason") == "Suspended" and not found.get("nextScheduleTime")

    eventually(suspended, 15)
    time.sleep(3)  # anything published before the suspend lands
    fired = len([r for r in records(env, namespace, "edit") if r.state == "Pending"])
    time.sleep(4)
    late = [r for r in records(env, namespace, "edit") if r.state == "Pending"][fired:]
    assert late == [], f"runs published after suspend: {late}"

    # Delete removes the entry.
    key = keys.redbeat_key(namespace, "edit")
    assert env.exists(key)
    kubectl(kubeconfig, "delete", "st", "edit", "-n", namespace, "--timeout=30s")
    assert not env.exists(key)
    assert env.zscore(keys.redbeat_schedule_key(), key) is None


def test_failing_task_retries_then_fails_with_attempt_count(
    kubeconfig: Path, namespace: str, env: redis.Redis
) -> None:
    spec = {
        "every": "1h",
        "task": {"name": "e2e.fail"},
        "retry": {
            "maxRetries": 2,
            "backoff": {"initialSeconds": 1, "factor": 1, "maxSeconds": 1},
            "jitter": False,
        },
    }
    apply(kubeconfig, namespace, task("broken", **spec))
    eventually(
        lambda: condition(get_json(kubeconfig, "st", "broken", "-n", namespace), "Ready"), 15
    )
    kubectl(kubeconfig, "annotate", "st", "broken", "-n", namespace, "beatkeeper.dev/run-now=first")

    seen: set[str] = set()

    def failed() -> dict[str, Any] | None:
        """lastRun went Retrying and ended Failed after 3 attempts"""
        found = status(kubeconfig, namespace, "broken")
        state = found.get("lastRun", {}).get("state")
        if state:
            seen.add(state)
        return found if state == "Failed" else None

    found = eventually(failed, timeout=30, interval=0.1)
    assert "Retrying" in seen or found["retries"] == 2
    assert found["lastRun"]["attempts"] == 3
    assert found["failed"] == 1
    assert found["retries"] == 2
    states = [r.state for r in records(env, namespace, "broken")]
    assert states.count("Retrying") == 2
    assert states[-1] == "Failed"
    events = get_json(kubeconfig, "events", "-n", namespace)["items"]
    assert any(
        e["reason"] == "RunFailed" and e["involvedObject"]["name"] == "broken" for e in events
    )


def test_run_now_runs_once_per_token(kubeconfig: Path, namespace: str, env: redis.Redis) -> None:
    apply(
        kubeconfig,
        namespace,
        task("manual", every="1h", task={"name": "e2e.count", "args": [f"{namespace}:n"]}),
    )
    eventually(
        lambda: condition(get_json(kubeconfig, "st", "manual", "-n", namespace), "Ready"), 15
    )

    def run_now(token: str) -> None:
        kubectl(
            kubeconfig,
            "annotate",
            "--overwrite",
            "st",
            "manual",
            "-n",
            namespace,
            f"beatkeeper.dev/run-now={token}",
        )

    def total() -> int:
        return int(env.get(f"{namespace}:n:total") or 0)

    run_now("a")
    eventually(lambda: total() == 1, 20)
    # Re-applying the same token (as GitOps does) and resyncs do nothing more.
    run_now("a")
    time.sleep(RESYNC * 2.5)
    assert total() == 1
    run_now("b")
    eventually(lambda: total() == 2, 20)
    time.sleep(RESYNC * 1.5)
    assert total() == 2
    assert status(kubeconfig, namespace, "manual")["runNowToken"] == "b"
    triggers = {r.trigger for r in records(env, namespace, "manual")}
    assert triggers == {"run-now"}


def test_redbeat_key_deleted_by_hand_heals_without_shifting(
    kubeconfig: Path, namespace: str, env: redis.Redis
) -> None:
    apply(
        kubeconfig, namespace, task("healme", every="1h", task={"name": "e2e.count", "args": ["k"]})
    )
    eventually(
        lambda: condition(get_json(kubeconfig, "st", "healme", "-n", namespace), "Ready"), 15
    )
    key = keys.redbeat_key(namespace, "healme")
    schedule = keys.redbeat_schedule_key()
    before_next = env.hget(key, "next")
    before_score = env.zscore(schedule, key)
    assert before_next is not None
    assert before_score is not None

    env.delete(key)
    env.zrem(schedule, key)
    eventually(lambda: env.exists(key), timeout=RESYNC * 2 + 2)
    assert env.hget(key, "next") == before_next  # same slot: the anchor did not move
    assert env.zscore(schedule, key) == before_score

    # Only the score lost: re-armed from the stored slot.
    env.zrem(schedule, key)
    eventually(lambda: env.zscore(schedule, key) == before_score, timeout=RESYNC * 2 + 2)


def test_operator_restart_loses_no_record_and_duplicates_no_fire(
    kubeconfig: Path, namespace: str, env: redis.Redis, operator: Any
) -> None:
    apply(
        kubeconfig,
        namespace,
        task("steady", every="1s", task={"name": "e2e.count", "args": [f"{namespace}:s"]}),
    )
    eventually(lambda: status(kubeconfig, namespace, "steady").get("succeeded", 0) >= 2, 20)
    before = env.hget(keys.redbeat_key(namespace, "steady"), "definition")

    operator.stop()
    time.sleep(4)  # runs go on; their records wait in the stream
    operator.start()
    assert env.hget(keys.redbeat_key(namespace, "steady"), "definition") == before

    apply(
        kubeconfig,
        namespace,
        task(
            "steady",
            every="1s",
            suspend=True,
            task={"name": "e2e.count", "args": [f"{namespace}:s"]},
        ),
    )
    time.sleep(3)  # the last published runs finish

    def counted() -> bool:
        """status counts exactly the Succeeded records in the stream"""
        done = [r for r in records(env, namespace, "steady") if r.state == "Succeeded"]
        return (
            status(kubeconfig, namespace, "steady").get("succeeded") == len(done) and len(done) >= 6
        )

    eventually(counted, timeout=20)
    pending = [r.run_id for r in records(env, namespace, "steady") if r.state == "Pending"]
    assert len(pending) == len(set(pending)), "a slot was fired twice"
    executions = {k.decode(): int(v) for k, v in env.hgetall(f"{namespace}:s").items()}  # type: ignore[union-attr]
    assert executions
    assert set(executions.values()) == {1}, f"a run executed twice: {json.dumps(executions)}"
    slots = sorted(contract.parse_run_id(run)[2] for run in pending)
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(slots)}
    assert gaps <= {1.0}, f"slots left the 1 s grid: {gaps}"
