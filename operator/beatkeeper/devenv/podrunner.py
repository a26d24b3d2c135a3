"""A stand-in kubelet for WorkerPool pods, for machines without one (DESIGN.md §4).

`python -m beatkeeper.devenv.podrunner --log-dir DIR` watches the pods of
WorkerPool Deployments in every namespace and runs one real `beatkeeper worker`
process per pod, with the pod's container environment (Secret, ConfigMap and
field references resolved: a dev tool holding the admin kubeconfig may read
Secrets, the operator never does), this runner's PYTHONPATH and a liveness file
of its own. It reports the pod Running, and Ready once the worker's liveness
file exists, through the pods/status subresource, so ReplicaSet, Deployment and
WorkerPool status tell the truth. A pod that goes away gets SIGTERM (Celery's
warm shutdown: running tasks finish) and SIGKILL after its grace period. A
worker that exits on its own is restarted with a backoff, as a kubelet would.
On SIGTERM the runner stops every worker it started.

Pods here are never bound to a node, so the apiserver deletes them at once
instead of gracefully: the runner still honours their grace period itself.
In a real cluster the kubelet does all of this and this module is not used.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from beatkeeper.devenv.processes import Component, Supervisor

SELECTOR = "app.kubernetes.io/managed-by=beatkeeper,app.kubernetes.io/name=beatkeeper-worker"
READY_LINE = "pod runner: watching pods"
_TICK = 0.1
_RETRY_CONFIG = 2.0  # seconds between attempts when a referenced Secret is missing
_MAX_BACKOFF = 10.0

log = logging.getLogger("beatkeeper.podrunner")


class ConfigError(RuntimeError):
    """The pod's environment cannot be built yet (a kubelet's CreateContainerConfigError)."""


@dataclass(frozen=True)
class Pod:
    """What the runner needs of a pod."""

    uid: str
    namespace: str
    name: str
    grace: float
    body: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Pod:
        meta, spec = body["metadata"], body["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return cls(str(meta["uid"]), meta["namespace"], meta["name"], float(grace), body)

    @property
    def container(self) -> Mapping[str, Any]:
        containers: Sequence[Mapping[str, Any]] = self.body["spec"]["containers"]
        return containers[0]

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class PodTable:
    """The wanted pods (not terminating), kept by the watch thread, read by the main loop."""

    pods: dict[str, Pod] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Event = field(default_factory=threading.Event)

    def replace(self, bodies: Sequence[Mapping[str, Any]]) -> None:
        wanted = [Pod.from_body(b) for b in bodies if not b["metadata"].get("deletionTimestamp")]
        with self.lock:
            self.pods = {pod.uid: pod for pod in wanted}
        self.changed.set()

    def apply(self, kind: str, body: Mapping[str, Any]) -> None:
        pod = Pod.from_body(body)
        with self.lock:
            if kind == "DELETED" or body["metadata"].get("deletionTimestamp"):
                self.pods.pop(pod.uid, None)
            else:
                self.pods[pod.uid] = pod
        self.changed.set()

    def snapshot(self) -> dict[str, Pod]:
        with self.lock:
            return dict(self.pods)


@dataclass
class Worker:
    pod: Pod
    component: Component | None = None
    liveness: Path | None = None
    started: str = ""
    ready: bool = False
    stop_deadline: float | None = None  # set once the pod is gone: SIGKILL after it
    restarts: int = 0
    next_start: float = 0.0  # monotonic: not before (backoff, or a missing Secret)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodRunner:
    def __init__(
        self,
        client: ApiClient,
        supervisor: Supervisor,
        state_dir: Path,
        base_env: Mapping[str, str],
        python: str = sys.executable,
    ) -> None:
        self.client = client
        self.core = CoreV1Api(client)
        self.supervisor = supervisor
        self.state_dir = state_dir
        self.base_env = {
            k: v
            for k, v in base_env.items()
            if not k.startswith("BEATKEEPER_") and k != "KUBECONFIG"
        }
        self.python = python
        self.workers: dict[str, Worker] = {}

    # The level: start what is wanted and missing, stop what runs and is not wanted.

    def sync(self, wanted: Mapping[str, Pod]) -> None:
        for uid, pod in wanted.items():
            worker = self.workers.setdefault(uid, Worker(pod))
            worker.pod = pod
        for uid, worker in self.workers.items():
            if uid not in wanted and worker.stop_deadline is None:
                self._stop(worker)

    def tick(self) -> None:
        now = time.monotonic()
        for uid, worker in list(self.workers.items()):
            if worker.stop_deadline is not None:
                if self._reaped(worker, now):
                    del self.workers[uid]
            elif worker.component is None:
                if now >= worker.next_start:
                    self._start(worker)
            elif not worker.component.running():
                self._crashed(worker, now)
            elif not worker.ready and worker.liveness is not None and worker.liveness.exists():
                worker.ready = self._report(worker, ready=True)

    def stop_all(self, grace: float) -> None:
        for worker in self.workers.values():
            if worker.stop_deadline is None:
                self._stop(worker)
        deadline = time.monotonic() + grace
        while self.workers and time.monotonic() < deadline:
            for uid, worker in list(self.workers.items()):
                if self._reaped(worker, time.monotonic()):
                    del self.workers[uid]
            time.sleep(_TICK)
        for worker in self.workers.values():
            worker.stop_deadline = 0.0
            self._reaped(worker, time.monotonic())
        self.workers.clear()

    # One worker's life.

    def _argv(self, pod: Pod) -> list[str]:
        command = [*pod.container.get("command", []), *pod.container.get("args", [])]
        if command[:1] != ["beatkeeper"]:
            raise ConfigError(f"container command {command} is not `beatkeeper ...`")
        hostname = f"--hostname={pod.name}.{pod.namespace}@%h"
        return [self.python, "-m", "beatkeeper.cli", *command[1:], hostname]

    def _start(self, worker: Worker) -> None:
        pod = worker.pod
        try:
            argv = self._argv(pod)
            env = {**self.base_env, **resolve_env(self.core, pod)}
        except (ConfigError, ApiException) as error:
            log.warning("pod %s cannot start yet: %s", pod.label, error)
            worker.next_start = time.monotonic() + _RETRY_CONFIG
            return
        liveness = self.state_dir / f"{pod.namespace}.{pod.name}.alive"
        liveness.unlink(missing_ok=True)
        env.update(BEATKEEPER_LIVENESS_FILE=str(liveness), PYTHONUNBUFFERED="1")
        if "PYTHONPATH" in self.base_env:
            env["PYTHONPATH"] = self.base_env["PYTHONPATH"]
        name = f"worker-{pod.namespace}-{pod.name}"
        worker.component = self.supervisor.start(name, argv, env=env)
        worker.liveness, worker.started, worker.ready = liveness, _now(), False
        log.info("pod %s: started worker pid %d", pod.label, worker.component.pid)
        self._report(worker, ready=False)

    def _crashed(self, worker: Worker, now: float) -> None:
        assert worker.component is not None
        code = worker.component.popen.returncode
        log.warning("pod %s: worker exited with %s; restarting", worker.pod.label, code)
        self.supervisor.components.remove(worker.component)
        worker.component, worker.ready = None, False
        worker.restarts += 1
        worker.next_start = now + min(2.0 ** (worker.restarts - 1), _MAX_BACKOFF)
        self._report(worker, ready=False, exit_code=code)

    def _stop(self, worker: Worker) -> None:
        worker.stop_deadline = time.monotonic() + worker.pod.grace
        if worker.component is not None and worker.component.running():
            log.info("pod %s gone: SIGTERM (grace %g s)", worker.pod.label, worker.pod.grace)
            worker.component.popen.send_signal(signal.SIGTERM)

    def _reaped(self, worker: Worker, now: float) -> bool:
        """True once the process is gone; SIGKILL its group past the deadline."""
        component = worker.component
        if component is None:
            return True
        if component.running() and worker.stop_deadline is not None and now >= worker.stop_deadline:
            log.warning("pod %s: grace period over, SIGKILL", worker.pod.label)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.pid, signal.SIGKILL)
            component.popen.wait()
        if component.running():
            return False
        log.info("pod %s: worker exited with %s", worker.pod.label, component.popen.returncode)
        self.supervisor.components.remove(component)
        if worker.liveness is not None:
            worker.liveness.unlink(missing_ok=True)
        return True

    def _report(self, worker: Worker, *, ready: bool, exit_code: int | None = None) -> bool:
        """Write the pod's status as a kubelet would; False if the pod is gone."""
        try:
            self.core.patch_namespaced_pod_status(
                worker.pod.name,
                worker.pod.namespace,
                pod_status(worker, ready=ready, exit_code=exit_code),
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        if ready:
            log.info("pod %s: ready", worker.pod.label)
        return ready


def pod_status(worker: Worker, *, ready: bool, exit_code: int | None = None) -> dict[str, Any]:
    now = _now()
    flag = "True" if ready else "False"
    container: dict[str, Any] = {
        "name": worker.pod.container["name"],
        "image": worker.pod.container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": worker.component is not None,
        "restartCount": worker.restarts,
    }
    if worker.component is not None:
        container["containerID"] = f"beatkeeper-local://{worker.component.pid}"
        container["state"] = {"running": {"startedAt": worker.started}}
    else:
        container["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        container["lastState"] = {"terminated": {"exitCode": exit_code or 0, "finishedAt": now}}
    conditions = [
        ("PodScheduled", "True"),
        ("Initialized", "True"),
        ("ContainersReady", flag),
        ("Ready", flag),
    ]
    return {
        "status": {
            "phase": "Running",
            "startTime": worker.started or now,
            "conditions": [
                {"type": kind, "status": status, "lastTransitionTime": now}
                for kind, status in conditions
            ],
            "containerStatuses": [container],
        }
    }


def _decoded(data: Mapping[str, bytes | str] | None) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (data or {}).items()}


def _source(core: CoreV1Api, kind: str, namespace: str, name: str) -> dict[str, str] | None:
    try:
        if kind == "secret":
            return _decoded(core.read_namespaced_secret(name, namespace).data)
        return dict(core.read_namespaced_config_map(name, namespace).data or {})
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _lookup(core: CoreV1Api, pod: Pod, kind: str, ref: Mapping[str, Any]) -> str | None:
    data = _source(core, kind, pod.namespace, ref["name"])
    value = None if data is None else data.get(ref["key"])
    if value is None and not ref.get("optional"):
        raise ConfigError(f"{kind} {ref['name']!r} key {ref['key']!r} not found")
    return value


def _field(pod: Pod, path: str) -> str:
    fields = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": "localhost",
        "spec.serviceAccountName": str(pod.body["spec"].get("serviceAccountName", "default")),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    return fields.get(path, "")


def resolve_env(core: CoreV1Api, pod: Pod) -> dict[str, str]:
    """The container's environment as a kubelet builds it (envFrom first, then env)."""
    env: dict[str, str] = {}
    for source in pod.container.get("envFrom") or []:
        for kind, key in (("secret", "secretRef"), ("configmap", "configMapRef")):
            if key in source:
                data = _source(core, kind, pod.namespace, source[key]["name"])
                if data is None and not source[key].get("optional"):
                    raise ConfigError(f"{kind} {source[key]['name']!r} not found")
                prefix = source.get("prefix", "")
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for item in pod.container.get("env") or []:
        value_from = item.get("valueFrom")
        value: str | None = item.get("value", "")
        if value_from and "secretKeyRef" in value_from:
            value = _lookup(core, pod, "secret", value_from["secretKeyRef"])
        elif value_from and "configMapKeyRef" in value_from:
            value = _lookup(core, pod, "configmap", value_from["configMapKeyRef"])
        elif value_from and "fieldRef" in value_from:
            value = _field(pod, value_from["fieldRef"]["fieldPath"])
        if value is not None:
            env[item["name"]] = value
    return env


def _plain(client: ApiClient, model: object) -> dict[str, Any]:
    return client.sanitize_for_serialization(model)  # type: ignore[no-any-return,no-untyped-call]


def watch_pods(client: ApiClient, table: PodTable, stop: threading.Event) -> None:
    """List, then watch from that version; list again when the watch ends or fails."""
    core = CoreV1Api(client)
    announced = False
    while not stop.is_set():
        try:
            listing = core.list_pod_for_all_namespaces(label_selector=SELECTOR)
            table.replace([_plain(client, p) for p in listing.items])
            if not announced:
                print(READY_LINE, flush=True)
                announced = True
            assert listing.metadata is not None
            stream = kubernetes.watch.Watch().stream(  # type: ignore[no-untyped-call]
                core.list_pod_for_all_namespaces,
                label_selector=SELECTOR,
                resource_version=listing.metadata.resource_version,
                timeout_seconds=30,
            )
            for event in stream:
                if stop.is_set() or event["type"] == "ERROR":
                    break
                table.apply(event["type"], _plain(client, event["object"]))
        except Exception:
            log.exception("watching pods failed; listing again")
            stop.wait(1)


def run(log_dir: Path, state_dir: Path, shutdown_grace: float) -> int:
    client: ApiClient = kubernetes.config.new_client_from_config()  # type: ignore[no-untyped-call]
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    runner = PodRunner(client, Supervisor(log_dir), state_dir, os.environ)
    table = PodTable()
    watcher = threading.Thread(
        target=watch_pods, args=(client, table, stop), name="watch-pods", daemon=True
    )
    watcher.start()
    try:
        while not stop.is_set():
            table.changed.wait(_TICK)
            table.changed.clear()
            runner.sync(table.snapshot())
            runner.tick()
    finally:
        log.info("stopping %d workers", len(runner.workers))
        runner.stop_all(shutdown_grace)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beatkeeper.devenv.podrunner")
    parser.add_argument("--log-dir", type=Path, required=True, help="one log file per worker")
    parser.add_argument("--state-dir", type=Path, help="liveness files (default: a temp dir)")
    parser.add_argument(
        "--shutdown-grace", type=float, default=8.0, help="seconds workers get when it stops"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="beatkeeper-pods-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args.log_dir, state_dir, args.shutdown_grace)
    finally:
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
