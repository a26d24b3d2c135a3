"""The chart as users run it: `helm install --wait` on the real node, everything in pods.

One release for the module, installed with the bundled Redis into a namespace
that enforces Pod Security "restricted": the operator, both beats and Redis
become Ready through their own probes, in containers of the project's images
that containerd runs. The release watches two team namespaces of its own (not
the `t-*` ones the session's host operator serves). Then, all in pods: the
webhook refuses through its Service, runs succeed in worker pods, a scale-down
lets a running task finish, a force-deleted pod's run is recovered on another
pod, the standby beat takes over, a pool whose pods cannot start says why,
`helm upgrade` rolls the operator and beat without a lost or doubled run, and
`helm uninstall` leaves no Beatkeeper pod. The tests run in file order and
share the release.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e_helpers import (
    CURRENT,
    FAILED,
    FAST_WORKER,
    apply,
    condition,
    eventually,
    get_json,
    verdicts,
)

from beatkeeper_core import contract, keys
from beatkeeper_devenv.helm import Helm, ensure_helm
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.settings import DevSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "beatkeeper"
RESTRICTED = ("pod-security.kubernetes.io/enforce=restricted",)


@dataclass
class Release:
    helm: Helm
    kubeconfig: Path
    name: str
    namespace: str
    team: str  # a watched namespace with the pools' broker Secret
    bare: str  # a watched namespace without it
    redis: redis.Redis  # the bundled Redis, through its ClusterIP Service

    @property
    def fullname(self) -> str:
        return f"{self.name}-beatkeeper"

    def diagnostics(self) -> str:
        """The last lines every pod of the release and its team namespace logged."""
        out = []
        for where in (self.namespace, self.team):
            found = get_json(self.kubeconfig, "pods", "-n", where)["items"]
            for pod in found:
                name = pod["metadata"]["name"]
                logs = kubectl(
                    self.kubeconfig, "logs", name, "-n", where, "--all-containers",
                    "--tail=30", "--prefix", check=False,
                )  # fmt: skip
                out.append(f"--- {where}/{name} ({pod['status'].get('phase')})\n{logs.stdout}")
        return "\n".join(out)

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        found = get_json(self.kubeconfig, "pods", "-n", self.namespace, "-l", selector)["items"]
        return [pod for pod in found if not pod["metadata"].get("deletionTimestamp")]

    def upgrade(self, *options: str) -> None:
        self.helm(
            "upgrade",
            self.name,
            str(CHART),
            "-n",
            self.namespace,
            "--reuse-values",
            "--wait",
            "--timeout=5m",
            *options,
        )


def namespace(kubeconfig: Path, prefix: str, labels: tuple[str, ...] = ()) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", name)
    if labels:
        kubectl(kubeconfig, "label", "namespace", name, *labels)
    return name


def release_finalizers(kubeconfig: Path, where: str) -> None:
    """Drop the finalizers of what is left in `where` once no operator serves it."""
    left = get_json(kubeconfig, "scheduledtasks,workerpools", "-n", where)["items"]
    for item in left:
        kubectl(
            kubeconfig, "patch", item["kind"].lower(), item["metadata"]["name"], "-n", where,
            "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False,
        )  # fmt: skip


def bundled_redis(kubeconfig: Path, release_namespace: str, fullname: str) -> redis.Redis:
    """The bundled Redis from the host: its Service's ClusterIP (kube-proxy routes it)."""
    secret = get_json(kubeconfig, "secret", f"{fullname}-redis", "-n", release_namespace)
    password = base64.b64decode(secret["data"]["password"]).decode()
    service = get_json(kubeconfig, "service", f"{fullname}-redis", "-n", release_namespace)
    return redis.Redis(host=service["spec"]["clusterIP"], port=6379, password=password)


@pytest.fixture(scope="module")
def release(kubeconfig: Path, crds: Path, worker_image: str) -> Iterator[Release]:
    with tempfile.TemporaryDirectory(prefix="helm-") as home:
        helm = Helm(ensure_helm(DevSettings.from_env(os.environ)), kubeconfig, Path(home))
        release_ns = namespace(kubeconfig, "c", RESTRICTED)
        team = namespace(kubeconfig, "c-team", RESTRICTED)
        bare = namespace(kubeconfig, "c-bare", RESTRICTED)
        name = f"bk{uuid.uuid4().hex[:6]}"
        started = time.monotonic()
        helm(
            "install", name, str(CHART), "-n", release_ns,
            "--set", "redis.bundled.enabled=true",
            "--set", f"watchNamespaces={{{team},{bare}}}",
            "--wait", "--timeout=5m",
        )  # fmt: skip
        print(f"helm install --wait: {time.monotonic() - started:.1f} s")
        fullname = f"{name}-beatkeeper"
        url = base64.b64decode(
            get_json(kubeconfig, "secret", f"{fullname}-redis", "-n", release_ns)["data"]["url"]
        ).decode()
        kubectl(
            kubeconfig, "create", "secret", "generic", "beatkeeper-redis", "-n", team,
            f"--from-literal=url={url}",
        )  # fmt: skip
        client = bundled_redis(kubeconfig, release_ns, fullname)
        yield Release(helm, kubeconfig, name, release_ns, team, bare, client)
        client.close()
        # Nothing of ours may outlive this module with our finalizer on it: it would wait
        # in its terminating namespace for another release's operator to finalize it
        # (test_helm's, cluster-wide at first, whose requests its own upgrade to namespaced
        # RBAC then refuses). This release's operator finalizes them if it still runs
        # (test_uninstall_leaves_no_beatkeeper_pod failed or was not selected); what is
        # left after it has gone loses the finalizer here.
        for made in (team, bare):
            kubectl(
                kubeconfig, "delete", "scheduledtasks,workerpools", "--all", "-n", made,
                "--wait=true", "--timeout=60s", check=False, timeout=90,
            )  # fmt: skip
        helm("uninstall", name, "-n", release_ns, "--wait", check=False)
        for made in (team, bare):
            release_finalizers(kubeconfig, made)
        for made in (release_ns, team, bare):
            kubectl(kubeconfig, "delete", "namespace", made, "--wait=false", check=False)


def pool(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "taskModules": ["e2e_tasks"],
            "allowedTasks": ["beatkeeper.*", "e2e.*"],
            "terminationGracePeriodSeconds": 30,
            "template": {"env": [{"name": k, "value": v} for k, v in FAST_WORKER.items()]},
            **spec,
        },
    }


def task(name: str, pool_name: str, call: str, *args: Any, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name},
        "spec": {"workerPool": pool_name, "task": {"name": call, "args": list(args)}, **spec},
    }


def status(release: Release, kind: str, name: str, where: str | None = None) -> dict[str, Any]:
    found = get_json(release.kubeconfig, kind, name, "-n", where or release.team)
    return dict(found.get("status") or {})


def ready_pool(release: Release, name: str, replicas: int) -> None:
    def ready() -> bool:
        """the pool's pods are Ready"""
        return status(release, "wp", name).get("readyReplicas") == replicas

    eventually(ready, timeout=90)


def counts(release: Release, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in release.redis.hgetall(key).items()}


def run_now(release: Release, name: str) -> None:
    token = uuid.uuid4().hex[:8]
    kubectl(
        release.kubeconfig, "annotate", "--overwrite", "st", name, "-n", release.team,
        f"beatkeeper.dev/run-now={token}",
    )  # fmt: skip


def events(release: Release, where: str, name: str, reason: str) -> list[dict[str, Any]]:
    items = get_json(release.kubeconfig, "events", "-n", where)["items"]
    return [e for e in items if e["reason"] == reason and e["involvedObject"]["name"] == name]


def pod_names(pods: list[dict[str, Any]]) -> list[str]:
    return [pod["metadata"]["name"] for pod in pods]


def holds_lock(release: Release, beat_pod: str) -> bool:
    """The beat's own log says it took the schedule lock."""
    logs = kubectl(release.kubeconfig, "logs", beat_pod, "-n", release.namespace).stdout
    return "Acquired lock" in logs


def is_ready(pod: dict[str, Any]) -> bool:
    return (condition(pod, "Ready") or {}).get("status") == "True"


# The install


def test_install_waits_until_every_component_is_ready_in_containerd(release: Release) -> None:
    ready = {
        component: [pod for pod in release.pods(component) if is_ready(pod)]
        for component in ("operator", "beat", "redis")
    }
    assert {k: len(v) for k, v in ready.items()} == {"operator": 1, "beat": 2, "redis": 1}
    for pod in (p for pods in ready.values() for p in pods):
        (container,) = pod["status"]["containerStatuses"]
        assert container["containerID"].startswith("containerd://"), container
    claims = get_json(release.kubeconfig, "pvc", "-n", release.namespace)["items"]
    assert [c["status"]["phase"] for c in claims] == ["Bound"]  # the node's provisioner
    assert release.redis.ping()


def test_the_webhook_answers_through_its_service(release: Release, worker_image: str) -> None:
    config = get_json(release.kubeconfig, "validatingwebhookconfiguration", release.fullname)
    services = {hook["clientConfig"]["service"]["name"] for hook in config["webhooks"]}
    assert services == {f"{release.fullname}-webhook"}
    apply(release.kubeconfig, release.team, pool("guarded", worker_image, replicas=0))
    eventually(lambda: status(release, "wp", "guarded").get("observedGeneration"), timeout=30)

    bad_cron = task("bad", "guarded", "e2e.count", schedule="*/61 * * * *")
    refused = apply(release.kubeconfig, release.team, bad_cron, check=False)
    assert refused.returncode != 0
    assert 'spec.schedule: "*/61 * * * *": minute 61 is out of range 0-59' in refused.stderr
    # Only the release's operator knows this pool (the host operator serves t-*): a refusal
    # that needs it came from the webhook behind the release's Service.
    other = task("other", "guarded", "other.task", every="1h")
    refused = apply(release.kubeconfig, release.team, other, check=False)
    assert refused.returncode != 0
    assert "spec.task.name" in refused.stderr
    assert "guarded" in refused.stderr


# Runs in worker pods


def test_a_scheduled_run_succeeds_in_a_worker_pod(release: Release, worker_image: str) -> None:
    apply(release.kubeconfig, release.team, pool("p", worker_image, replicas=1))
    ready_pool(release, "p", 1)
    apply(release.kubeconfig, release.team, task("tick", "p", "e2e.count", "tick", every="2s"))

    def succeeded() -> dict[str, Any] | None:
        """the task's status shows a Succeeded run"""
        found = status(release, "st", "tick")
        return found if (found.get("lastRun") or {}).get("state") == "Succeeded" else None

    eventually(succeeded, timeout=60)
    table = kubectl(release.kubeconfig, "get", "st", "tick", "-n", release.team).stdout
    assert "Succeeded" in table
    pods = get_json(
        release.kubeconfig, "pods", "-n", release.team, "-l", "beatkeeper.dev/workerpool=p"
    )["items"]
    assert pods
    assert pods[0]["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert set(counts(release, "tick").values()) == {1}
    kubectl(release.kubeconfig, "delete", "st", "tick", "-n", release.team)


def test_scaling_down_lets_the_running_task_finish(release: Release, worker_image: str) -> None:
    apply(release.kubeconfig, release.team, pool("drain", worker_image, replicas=1))
    ready_pool(release, "drain", 1)
    far = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    apply(release.kubeconfig, release.team, task("long", "drain", "e2e.slow", "long", 8, at=far))
    run_now(release, "long")
    eventually(lambda: counts(release, "long:started"), timeout=60)

    kubectl(release.kubeconfig, "scale", "wp/drain", "-n", release.team, "--replicas=0")

    def terminating() -> bool:
        """the kubelet is stopping the worker pod (SIGTERM: Celery's warm shutdown)"""
        pods = get_json(release.kubeconfig, "pods", "-n", release.team, "-l",
                        "beatkeeper.dev/workerpool=drain")["items"]  # fmt: skip
        return any(p["metadata"].get("deletionTimestamp") for p in pods)

    eventually(terminating, timeout=30)

    def finished() -> dict[str, Any] | None:
        """the run finished and is recorded Succeeded"""
        found = status(release, "st", "long")
        return found if (found.get("lastRun") or {}).get("state") == "Succeeded" else None

    found = eventually(finished, timeout=60)
    assert counts(release, "long:started") == counts(release, "long:finished")
    assert set(counts(release, "long:started").values()) == {1}
    assert found["succeeded"] == 1


def test_a_force_deleted_pod_run_is_recovered_on_another_pod_once(
    release: Release, worker_image: str
) -> None:
    apply(release.kubeconfig, release.team, pool("pair", worker_image, replicas=2))
    ready_pool(release, "pair", 2)
    far = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    apply(release.kubeconfig, release.team, task("work", "pair", "e2e.slow", "work", 6, at=far))
    run_now(release, "work")
    (run_id,) = eventually(lambda: counts(release, "work:started"), timeout=60)
    victim = release.redis.hget("work:host", run_id)
    assert victim is not None
    kubectl(
        release.kubeconfig, "delete", "pod", victim.decode(), "-n", release.team,
        "--grace-period=0", "--force",
    )  # fmt: skip

    def recovered() -> dict[str, Any] | None:
        """the run started again on the other pod and Succeeded"""
        found = status(release, "st", "work")
        done = (found.get("lastRun") or {}).get("state") == "Succeeded"
        return found if done and counts(release, "work:finished") else None

    found = eventually(recovered, timeout=90)
    assert counts(release, "work:started") == {run_id: 2}
    assert counts(release, "work:finished") == {run_id: 1}
    assert release.redis.hget("work:host", run_id) != victim
    assert found["succeeded"] == 1  # recorded once


def test_the_standby_beat_fires_the_next_slot_when_the_active_one_goes(
    release: Release, worker_image: str
) -> None:
    apply(release.kubeconfig, release.team, pool("beats", worker_image, replicas=1))
    ready_pool(release, "beats", 1)
    apply(
        release.kubeconfig, release.team, task("pulse", "beats", "e2e.count", "pulse", every="2s")
    )
    eventually(lambda: len(counts(release, "pulse")) >= 2, timeout=60)
    lock = keys.redbeat_lock_key()
    active = [name for name in pod_names(release.pods("beat")) if holds_lock(release, name)]
    assert len(active) == 1, active
    assert release.redis.exists(lock)
    deleted_at = dt.datetime.now(dt.UTC)
    kubectl(release.kubeconfig, "delete", "pod", active[0], "-n", release.namespace, "--wait=false")

    def fired_after() -> list[dt.datetime]:
        """slots after the deletion ran"""
        slots = [contract.parse_run_id(run)[2] for run in counts(release, "pulse")]
        return [slot for slot in slots if slot > deleted_at + dt.timedelta(seconds=2)]

    later = eventually(fired_after, timeout=30)
    assert (min(later) - deleted_at).total_seconds() <= 15  # the standby took over
    assert set(counts(release, "pulse").values()) == {1}  # no slot twice
    kubectl(release.kubeconfig, "delete", "st", "pulse", "-n", release.team)


# A pool whose pods cannot start says why


def broken_pools(release: Release, image: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Reason -> (namespace, pool): the bare namespace has no broker Secret, the team's has."""
    return {
        "BrokerSecretMissing": (release.bare, pool("nosecret", image, replicas=1)),
        "ImageNotPresent": (
            release.bare,
            pool("noimage", "example.org/beatkeeper/none:1", replicas=1),
        ),
        "CrashLoop": (
            release.team,
            pool("crashing", image, replicas=1, taskModules=["no_such_module"]),
        ),
        "Unschedulable": (
            release.bare,
            pool("huge", image, replicas=1, template={"resources": {"requests": {"cpu": "64"}}}),
        ),
    }


def test_a_pool_whose_pods_cannot_start_says_why(
    release: Release, worker_image: str, health_checker: Path
) -> None:
    pools = broken_pools(release, worker_image)
    for where, manifest in pools.values():
        apply(release.kubeconfig, where, manifest)

    def stalled(name: str, where: str) -> dict[str, Any] | None:
        found = condition({"status": status(release, "wp", name, where)}, "Stalled")
        return found if found and found["status"] == "True" else None

    for reason, (where, manifest) in pools.items():
        name = manifest["metadata"]["name"]
        found = eventually(lambda name=name, where=where: stalled(name, where), timeout=90)
        assert found["reason"] == reason, found
        assert "kubectl " in found["message"], found  # the next step
    # kstatus (Flux), the Argo CD script and the Flux expressions all say Failed / Degraded.
    broken = [
        get_json(release.kubeconfig, "wp", manifest["metadata"]["name"], "-n", where)
        for where, manifest in pools.values()
    ]
    assert verdicts(health_checker, *broken) == [FAILED] * len(broken)
    time.sleep(3)  # more polls: each warning stays single
    for reason, (where, manifest) in pools.items():
        warnings = events(release, where, manifest["metadata"]["name"], reason)
        assert len(warnings) == 1, warnings
        assert warnings[0]["type"] == "Warning"
        assert warnings[0].get("count", 1) == 1

    # The Secret appears without its key, then with it: the reason follows, then clears.
    kubectl(
        release.kubeconfig, "create", "secret", "generic", "beatkeeper-redis", "-n",
        release.bare, "--from-literal=other=x",
    )  # fmt: skip
    kubectl(
        release.kubeconfig, "delete", "pod", "-n", release.bare, "-l",
        "beatkeeper.dev/workerpool=nosecret", "--wait=false",
    )  # fmt: skip
    missing_key = eventually(
        lambda: (stalled("nosecret", release.bare) or {}).get("reason") == "BrokerSecretKeyMissing",
        timeout=60,
    )
    assert missing_key
    url = release.redis.connection_pool.connection_kwargs
    secret_url = f"redis://:{url['password']}@{url['host']}:6379/0"
    kubectl(release.kubeconfig, "delete", "secret", "beatkeeper-redis", "-n", release.bare)
    kubectl(
        release.kubeconfig, "create", "secret", "generic", "beatkeeper-redis", "-n",
        release.bare, f"--from-literal=url={secret_url}",
    )  # fmt: skip

    def healthy() -> bool:
        """the pool runs once its Secret is right"""
        found = status(release, "wp", "nosecret", release.bare)
        ok = (condition({"status": found}, "Ready") or {}).get("status") == "True"
        return ok and found.get("readyReplicas") == 1

    eventually(healthy, timeout=90)
    fixed = get_json(release.kubeconfig, "wp", "nosecret", "-n", release.bare)
    assert verdicts(health_checker, fixed) == [CURRENT]
    for where, manifest in pools.values():
        kubectl(release.kubeconfig, "delete", "wp", manifest["metadata"]["name"], "-n", where,
                "--wait=false")  # fmt: skip


# Upgrade and uninstall


def test_helm_upgrade_rolls_operator_and_beat_without_a_lost_or_doubled_run(
    release: Release, worker_image: str
) -> None:
    apply(release.kubeconfig, release.team, pool("steady", worker_image, replicas=1))
    ready_pool(release, "steady", 1)
    apply(release.kubeconfig, release.team, task("steady", "steady", "e2e.count", "steady",
                                                  every="2s"))  # fmt: skip
    eventually(lambda: len(counts(release, "steady")) >= 3, timeout=60)
    before = {pod["metadata"]["uid"] for c in ("operator", "beat") for pod in release.pods(c)}

    release.upgrade(
        "--set", "operator.podAnnotations.rollout=upgrade-1",
        "--set", "beat.podAnnotations.rollout=upgrade-1",
    )  # fmt: skip
    after = {pod["metadata"]["uid"] for c in ("operator", "beat") for pod in release.pods(c)}
    assert not before & after, "every operator and beat pod was replaced"
    upgraded = dt.datetime.now(dt.UTC)

    def fired_since() -> bool:
        """slots after the rollout ran"""
        slots = [contract.parse_run_id(run)[2] for run in counts(release, "steady")]
        return sum(slot > upgraded for slot in slots) >= 3

    eventually(fired_since, timeout=60)
    kubectl(release.kubeconfig, "delete", "st", "steady", "-n", release.team)
    ran = counts(release, "steady")
    slots = sorted(contract.parse_run_id(run)[2] for run in ran)
    assert set(ran.values()) == {1}, "a slot ran twice"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert set(gaps) == {2.0}, f"slots lost across the upgrade: {slots}"


def test_uninstall_leaves_no_beatkeeper_pod(release: Release) -> None:
    # What the README asks of a user: delete the objects while their operator still runs
    # (it removes its finalizer and their schedule entries), then uninstall.
    for where in (release.team, release.bare):
        kubectl(release.kubeconfig, "delete", "st,wp", "--all", "-n", where, "--wait=true")
    release.helm("uninstall", release.name, "-n", release.namespace, "--wait")

    def no_pods() -> bool:
        """no pod of the release or of a worker pool is left"""
        left = []
        for where in (release.namespace, release.team, release.bare):
            left += get_json(release.kubeconfig, "pods", "-n", where)["items"]
        return not left

    eventually(no_pods, timeout=90)
