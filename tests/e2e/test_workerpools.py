"""WorkerPool -> owned Deployment -> worker pods on the real node, scaled by backlog.

The real kube-apiserver and controller-manager (ReplicaSets, garbage collection),
the node (kubelet, containerd: the pods run the worker image with the tests'
tasks), Redis, the operator and beat. Namespaces enforce Pod Security
"restricted", so the pods exist only if the template meets it, and the kubelet
enforces the security context. Windows are scaled down to seconds; the
assertions are the product's.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import redis
from e2e_helpers import CURRENT, FAST_WORKER, apply, condition, eventually, get_json, verdicts
from kubernetes.client import AppsV1Api

from beatkeeper.operator.deployments import APP_NAME, NAME_LABEL
from beatkeeper_core import contract, keys
from beatkeeper_core.publish import publish_runs
from beatkeeper_devenv.kube import kubectl
from beatkeeper_worker.app import create_app
from beatkeeper_worker.runtime import runtime_for
from beatkeeper_worker.settings import WorkerSettings


def pool(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "imagePullPolicy": "Never",  # imported into the node, never pulled
            "taskModules": ["e2e_tasks"],
            "allowedTasks": ["beatkeeper.*", "e2e.*"],
            "terminationGracePeriodSeconds": 30,
            "template": {"env": [{"name": k, "value": v} for k, v in FAST_WORKER.items()]},
            **spec,
        },
    }


@pytest.fixture
def team(kubeconfig: Path, namespace: str, redis_url: str, operator: Any, beat: Any) -> str:
    """A namespace under Pod Security "restricted", with the pools' broker Secret."""
    kubectl(
        kubeconfig,
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
    )
    kubectl(
        kubeconfig,
        "create",
        "secret",
        "generic",
        "beatkeeper-redis",
        "-n",
        namespace,
        f"--from-literal=url={redis_url}",
    )
    return namespace


@pytest.fixture
def apps(kubeconfig: Path) -> Iterator[AppsV1Api]:
    client = kubernetes.config.new_client_from_config(str(kubeconfig))
    yield AppsV1Api(client)
    client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(redis_url)
    yield found
    found.close()


WORKER_SELECTOR = f"{NAME_LABEL}={APP_NAME}"


def status(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    return get_json(kubeconfig, "wp", name, "-n", namespace).get("status", {})


def worker_containers(kubeconfig: Path, namespace: str) -> set[str]:
    """IDs of the worker containers running in `namespace`'s pods, as the kubelet reports them."""
    pods = get_json(kubeconfig, "pods", "-n", namespace, "-l", WORKER_SELECTOR)["items"]
    return {
        status["containerID"]
        for pod in pods
        for status in (pod.get("status") or {}).get("containerStatuses") or []
        if "running" in (status.get("state") or {}) and status.get("containerID")
    }


def events(kubeconfig: Path, namespace: str, name: str, reason: str) -> list[str]:
    items = get_json(kubeconfig, "events", "-n", namespace)["items"]
    return [
        e["message"] for e in items if e["reason"] == reason and e["involvedObject"]["name"] == name
    ]


def test_pool_owns_a_deployment_of_real_workers_and_kubectl_scale_works(
    kubeconfig: Path, team: str, worker_image: str
) -> None:
    apply(kubeconfig, team, pool("p", worker_image, replicas=2))

    def ready() -> dict[str, Any] | None:
        """WorkerPool Ready with 2/2 replicas ready"""
        found = status(kubeconfig, team, "p")
        ok = (condition({"status": found}, "Ready") or {}).get("status") == "True"
        return found if ok and found.get("readyReplicas") == 2 else None

    found = eventually(ready, timeout=60)
    assert found["selector"] == (
        "app.kubernetes.io/name=beatkeeper-worker,beatkeeper.dev/workerpool=p"
    )
    containers = worker_containers(kubeconfig, team)
    assert len(containers) == 2
    assert all(cid.startswith("containerd://") for cid in containers), containers
    owner = get_json(kubeconfig, "wp", "p", "-n", team)["metadata"]["uid"]
    deployment = get_json(kubeconfig, "deployment", "p-workers", "-n", team)
    (reference,) = deployment["metadata"]["ownerReferences"]
    assert (reference["kind"], reference["uid"], reference["controller"]) == (
        "WorkerPool",
        owner,
        True,
    )
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BEATKEEPER_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "beatkeeper-redis",
        "key": "url",
    }
    assert env["BEATKEEPER_WORKER_QUEUE"]["value"] == f"beatkeeper.{team}.p"

    kubectl(kubeconfig, "scale", "wp/p", "-n", team, "--replicas=1")

    def scaled_down() -> bool:
        """the Deployment, the pool's status and the processes are at 1 replica"""
        deployment = get_json(kubeconfig, "deployment", "p-workers", "-n", team)
        found = status(kubeconfig, team, "p")
        return (
            deployment["spec"]["replicas"] == 1
            and (found.get("replicas"), found.get("readyReplicas")) == (1, 1)
            and len(worker_containers(kubeconfig, team)) == 1
        )

    eventually(scaled_down, timeout=30)
    assert "spec.replicas 2 -> 1" in events(kubeconfig, team, "p", "Scaled")


def test_burst_scales_up_within_2s_and_down_after_the_window_losing_nothing(
    kubeconfig: Path,
    team: str,
    redis_url: str,
    apps: AppsV1Api,
    client: redis.Redis,
    worker_image: str,
    health_checker: Path,
) -> None:
    window = 4
    autoscaling = {"maxReplicas": 3, "scaleDown": {"stabilizationSeconds": window}}
    apply(kubeconfig, team, pool("burst", worker_image, autoscaling=autoscaling))
    eventually(
        lambda: (
            (condition({"status": status(kubeconfig, team, "burst")}, "Ready") or {}).get("reason")
            == "ScaledToZero"
        ),
        timeout=30,
    )
    # Short runs, and two long ones still running when the short ones are done: the
    # scale-down that follows stops pods while they run (warm shutdown must save them).
    key = f"{team}:burst"
    app = create_app(WorkerSettings(broker_url=redis_url))
    base = dt.datetime.now(dt.UTC).replace(microsecond=0)
    queue = contract.queue_name(team, "burst")
    runs = [
        (
            contract.RunEnvelope.for_slot(
                team,
                "burst",
                base + dt.timedelta(seconds=i),
                contract.TaskCall(name="e2e.slow", args=[key, 10.0 if i < 2 else 0.5]),
                contract.RunPolicy(),
            ),
            queue,
        )
        for i in range(14)
    ]
    published = time.monotonic()
    publish_runs(app, runs, registry=runtime_for(app).registry())
    app.close()

    replicas: list[tuple[float, int]] = []
    pools = kubernetes.client.CustomObjectsApi(apps.api_client)
    seen: dict[str, dict[str, Any]] = {}  # the pool as sampled, by Ready reason

    def deployment_replicas() -> int:
        found = apps.read_namespaced_deployment("burst-workers", team)
        count = int(found.spec.replicas if found.spec else 0)
        if not replicas or replicas[-1][1] != count:
            replicas.append((time.monotonic() - published, count))
        body = pools.get_namespaced_custom_object(
            "beatkeeper.dev", "v1alpha1", team, "workerpools", "burst"
        )
        seen.setdefault((condition(body, "Ready") or {}).get("reason", ""), body)
        return count

    while deployment_replicas() == 0:
        assert time.monotonic() - published < 5, "no scale-up"
        time.sleep(0.05)
    raised_after = replicas[-1][0]
    assert raised_after < 2.0, f"replicas raised {raised_after:.2f} s after the backlog appeared"
    assert replicas[-1][1] == 3  # 14 runs at concurrency 2, capped at maxReplicas

    def finished() -> int:
        return int(client.hlen(f"{key}:finished"))

    deadline = time.monotonic() + 60
    while finished() < len(runs):
        assert time.monotonic() < deadline, f"{finished()} of {len(runs)} runs finished"
        deployment_replicas()
        time.sleep(0.1)
    drained = time.monotonic() - published
    while deployment_replicas() != 0:
        assert time.monotonic() - published < drained + window + 10, replicas
        time.sleep(0.1)
    down = replicas[-1][0]
    assert down - drained >= window - 1, f"scaled to zero {down - drained:.1f} s after the drain"
    # No run lost, none killed mid-way and started again.
    started = {k.decode(): int(v) for k, v in client.hgetall(f"{key}:started").items()}
    done = {k.decode(): int(v) for k, v in client.hgetall(f"{key}:finished").items()}
    assert len(started) == len(runs)
    assert started == done
    assert set(started.values()) == {1}, started
    # Routine scaling never made the pool unready: every tool said Healthy at every step.
    assert "Scaling" in seen, sorted(seen)
    ready = [condition(body, "Ready") for body in seen.values()]
    assert {c["status"] for c in ready if c} == {"True"}, ready
    assert len({c["lastTransitionTime"] for c in ready if c}) == 1, ready  # never flipped
    assert verdicts(health_checker, *seen.values()) == [CURRENT] * len(seen)
    assert not any("/" in c["message"] for c in ready if c), ready  # no "4/3 replicas ready"
    messages = events(kubeconfig, team, "burst", "Scaled")
    assert "backlog 14 -> 3 replicas" in messages
    assert f"scale down to 0 after {window} s idle" in messages
    eventually(lambda: not worker_containers(kubeconfig, team), timeout=30)


def test_pool_at_zero_has_a_ready_worker_before_the_slot(
    kubeconfig: Path, team: str, client: redis.Redis, worker_image: str
) -> None:
    autoscaling = {
        "maxReplicas": 2,
        "prewarmSeconds": 8,
        "scaleDown": {"stabilizationSeconds": 2},
    }
    apply(kubeconfig, team, pool("warm", worker_image, autoscaling=autoscaling))
    eventually(lambda: status(kubeconfig, team, "warm").get("observedGeneration"), timeout=30)
    slot = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=16)
    task = {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "once"},
        "spec": {
            "at": contract.format_slot(slot),
            "workerPool": "warm",
            "task": {"name": "e2e.count", "args": [f"{team}:once"]},
        },
    }
    apply(kubeconfig, team, task)
    time.sleep(3)
    assert status(kubeconfig, team, "warm")["desiredReplicas"] == 0, "pre-warmed too early"

    def ready_worker() -> bool:
        """one ready worker"""
        return bool(status(kubeconfig, team, "warm").get("readyReplicas"))

    eventually(ready_worker, timeout=(slot - dt.datetime.now(dt.UTC)).total_seconds() + 5)
    ready_at = dt.datetime.now(dt.UTC)
    assert ready_at < slot, f"first ready worker {ready_at - slot} after the slot"
    at = slot.astimezone(dt.UTC).strftime("%H:%M:%S")
    assert events(kubeconfig, team, "warm", "Scaled") == [f"prewarm for {team}/once at {at}"]

    def started() -> contract.RunRecord | None:
        """the slot's run started"""
        prefix = f"{team}/once@"
        for record in contract.stream_records(client.xrange(keys.RUN_RECORDS_STREAM)):  # type: ignore[arg-type]
            if record.run_id.startswith(prefix) and record.state == "Running":
                return record
        return None

    record = eventually(started, timeout=30)
    lateness = (record.time - slot).total_seconds()
    assert lateness < 1.0, f"the run started {lateness:.2f} s after its slot"


def test_a_deployment_the_pool_does_not_own_is_left_alone(
    kubeconfig: Path, team: str, worker_image: str
) -> None:
    kubectl(
        kubeconfig,
        "create",
        "deployment",
        "taken-workers",
        "-n",
        team,
        "--image=localhost/pause:local",
        "--replicas=0",
    )
    before = get_json(kubeconfig, "deployment", "taken-workers", "-n", team)
    apply(kubeconfig, team, pool("taken", worker_image, replicas=2))

    def stalled() -> dict[str, Any] | None:
        """Stalled=True, reason DeploymentConflict"""
        found = condition({"status": status(kubeconfig, team, "taken")}, "Stalled")
        return found if found and found["status"] == "True" else None

    found = eventually(stalled, timeout=30)
    assert found["reason"] == "DeploymentConflict"
    time.sleep(3)  # more polls: the warning stays single, the Deployment untouched
    warnings = events(kubeconfig, team, "taken", "DeploymentConflict")
    assert len(warnings) == 1
    assert "taken-workers" in warnings[0]
    after = get_json(kubeconfig, "deployment", "taken-workers", "-n", team)
    assert after["metadata"].get("ownerReferences") is None
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["replicas"] == 0


# Last on purpose: the controller-manager's garbage collector maps a CRD created
# after it started only at its next discovery resync (every 30 s), so a pool
# deleted in the first seconds of a session waits for that.
def test_deleting_the_pool_removes_its_deployment_and_workers(
    kubeconfig: Path, team: str, worker_image: str
) -> None:
    apply(kubeconfig, team, pool("doomed", worker_image, replicas=1))
    eventually(lambda: status(kubeconfig, team, "doomed").get("readyReplicas") == 1, timeout=60)
    assert len(worker_containers(kubeconfig, team)) == 1

    kubectl(kubeconfig, "delete", "wp", "doomed", "-n", team, "--timeout=30s")

    def gone() -> bool:
        """garbage collection removed the Deployment and its pods; the worker stopped"""
        left = kubectl(kubeconfig, "get", "deployments,pods", "-n", team, "-o", "name").stdout
        return not left.strip() and not worker_containers(kubeconfig, team)

    eventually(gone, timeout=60)
