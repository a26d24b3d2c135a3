"""`make demo`: the whole system live on one machine, then a summary.

Starts the local environment (a control plane, or the cluster of a given
kubeconfig, and Redis), the CRDs, the operator with its webhook, beat and the
local pod runner; serves a small HTTP endpoint for the HTTP check; applies
examples/ into the `demo` namespace; shows a live view of `kubectl get st,wp`
until the time is up or Ctrl-C; prints what happened (runs by state, retries,
scale events) and stops everything it started.

The burst example gets a `beatkeeper.dev/run-now` token when applied, so the
pool's scale-up and scale-down show in the first minute instead of waiting
for its schedule.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from beatkeeper.devenv.environment import Environment, local_environment
from beatkeeper.devenv.kube import install_crds, kubectl
from beatkeeper.devenv.system import start_system
from beatkeeper_core.settings import DevSettings

NAMESPACE = "demo"
EXAMPLE_URL = "http://127.0.0.1:8099/health"  # what examples/http-check.yaml names
BURST_TASK = "fan-out"
RUN_NOW = "beatkeeper.dev/run-now"
# On a cluster with nodes, the pools' pods must wait for the local pod runner
# rather than be scheduled onto a node that cannot pull the example image.
LOCAL_NODE_SELECTOR = {"beatkeeper.dev/pod-runner": "local"}
STATES = ("succeeded", "failed", "retries", "missed", "skipped")
Say = Callable[[str], None]


class _Health(BaseHTTPRequestHandler):
    """The endpoint the HTTP-check example calls: 200 on /health, counted."""

    hits = 0

    def do_GET(self) -> None:
        ok = self.path.startswith("/health")
        if ok:
            type(self).hits += 1
        body = b'{"status": "ok"}' if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the live view is the output."""


@dataclass
class Endpoint:
    """The demo's HTTP endpoint on a free 127.0.0.1 port."""

    server: ThreadingHTTPServer

    @classmethod
    def start(cls) -> Endpoint:
        _Health.hits = 0
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
        threading.Thread(target=server.serve_forever, name="demo-endpoint", daemon=True).start()
        return cls(server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stopper:
    """Ctrl-C and SIGTERM end the live view (not the teardown that follows)."""

    event: threading.Event = field(default_factory=threading.Event)

    def _set(self, signum: int, _frame: FrameType | None) -> None:
        self.event.set()

    @contextmanager
    def installed(self) -> Iterator[threading.Event]:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._set)
        try:
            yield self.event
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def example_documents(examples: Path, url: str, *, local_cluster: bool) -> list[dict[str, Any]]:
    """The example manifests, pools first, adjusted to this machine.

    The HTTP check calls the demo's endpoint; the burst task gets a run-now
    token; on a cluster with nodes the pools' pods wait for the pod runner.
    """
    documents: list[dict[str, Any]] = []
    for path in sorted(examples.glob("*.yaml")):
        text = path.read_text().replace(EXAMPLE_URL, url)
        documents += [doc for doc in yaml.safe_load_all(text) if doc]
    for doc in documents:
        meta = doc.setdefault("metadata", {})
        if doc["kind"] == "ScheduledTask" and meta["name"] == BURST_TASK:
            meta.setdefault("annotations", {})[RUN_NOW] = f"demo-{int(time.time())}"
        if doc["kind"] == "WorkerPool" and not local_cluster:
            template = doc["spec"].setdefault("template", {})
            template["nodeSelector"] = {**template.get("nodeSelector", {}), **LOCAL_NODE_SELECTOR}
    return sorted(documents, key=lambda doc: doc["kind"] != "WorkerPool")


def prepare_namespace(env: Environment, redis_url: str) -> None:
    kubectl(env.kubeconfig, "create", "namespace", NAMESPACE, check=False)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "beatkeeper-redis", "namespace": NAMESPACE},
        "stringData": {"url": redis_url},
    }
    kubectl(env.kubeconfig, "apply", "-f", "-", stdin=json.dumps(secret))


def apply_examples(env: Environment, documents: list[dict[str, Any]]) -> None:
    for document in documents:
        kubectl(env.kubeconfig, "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(document))


def live_view(env: Environment, seconds: float | None, stop: threading.Event) -> None:
    """Redraw `kubectl get st,wp` until the deadline or a stop signal.

    In a terminal the screen is redrawn every 2 s; otherwise (CI, a pipe) a
    table is appended every 10 s.
    """
    interactive = sys.stdout.isatty()
    deadline = time.monotonic() + seconds if seconds else None
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        table = kubectl(env.kubeconfig, "get", "st,wp", "-n", NAMESPACE, check=False).stdout
        left = f"{deadline - time.monotonic():.0f} s left" if deadline else "Ctrl-C to stop"
        stamp = time.strftime("%H:%M:%S")
        header = f"Beatkeeper demo: kubectl get st,wp -n {NAMESPACE}  ({stamp}, {left})"
        sys.stdout.write(("\033[H\033[J" if interactive else "\n") + f"{header}\n\n{table}")
        sys.stdout.flush()
        wait = 2.0 if interactive else 10.0
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        stop.wait(wait)


def _get(env: Environment, *args: str) -> list[dict[str, Any]]:
    found = kubectl(env.kubeconfig, "get", *args, "-n", NAMESPACE, "-o", "json")
    return list(json.loads(found.stdout)["items"])


def summary(env: Environment) -> dict[str, Any]:
    """What happened, read back from the API."""
    per_task: dict[str, dict[str, Any]] = {}
    for item in _get(env, "scheduledtasks"):
        status = item.get("status") or {}
        row: dict[str, Any] = {state: int(status.get(state) or 0) for state in STATES}
        row["last"] = (status.get("lastRun") or {}).get("state")
        per_task[item["metadata"]["name"]] = row
    pools = {
        item["metadata"]["name"]: (item.get("status") or {}).get("desiredReplicas", 0)
        for item in _get(env, "workerpools")
    }
    scaled = [
        f"{e['involvedObject']['name']}: {e['message']}"
        for e in sorted(_get(env, "events"), key=lambda e: e.get("lastTimestamp") or "")
        if e["reason"] == "Scaled"
    ]
    return {
        "tasks": per_task,
        "runs_by_state": {
            state: sum(row[state] for row in per_task.values())
            for state in STATES
            if state != "retries"
        },
        "retries": sum(row["retries"] for row in per_task.values()),
        "pools_desired_replicas": pools,
        "scale_events": scaled,
        "endpoint_hits": _Health.hits,
    }


def print_summary(result: dict[str, Any]) -> None:
    print("\nSummary")
    print(
        f"{'task':<16}{'last':<12}{'ok':>5}{'failed':>8}{'retries':>9}{'missed':>8}{'skipped':>9}"
    )
    for name, row in sorted(result["tasks"].items()):
        print(
            f"{name:<16}{row['last'] or '-':<12}{row['succeeded']:>5}{row['failed']:>8}"
            f"{row['retries']:>9}{row['missed']:>8}{row['skipped']:>9}"
        )
    runs = ", ".join(f"{state} {count}" for state, count in result["runs_by_state"].items())
    print(f"runs: {runs}; retries: {result['retries']}")
    print(f"HTTP endpoint answered {result['endpoint_hits']} checks")
    print(f"scale events: {len(result['scale_events'])}")
    for message in result["scale_events"][-8:]:
        print(f"  {message}")
    print(json.dumps({"demo": "summary", **result}))


def run_demo(
    settings: DevSettings,
    say: Say,
    *,
    seconds: float | None,
    external_kubeconfig: Path | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary. Every process it starts is stopped on return."""
    examples = settings.crds_dir.parent / "examples"
    kubeconfig = None if external_kubeconfig else settings.state_dir / "demo-kubeconfig"
    with local_environment(
        settings,
        redis=True,
        kubeconfig=kubeconfig,
        external_kubeconfig=external_kubeconfig,
        progress=say,
    ) as env:
        assert env.redis_url is not None
        install_crds(env.kubeconfig, settings.crds_dir)
        say("CRDs installed")
        start_system(env, say, worker_path=[examples])
        endpoint = Endpoint.start()
        try:
            with Stopper().installed() as stop:
                prepare_namespace(env, env.redis_url)
                documents = example_documents(
                    examples, endpoint.url, local_cluster=env.local_cluster
                )
                apply_examples(env, documents)
                names = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
                say(f"applied {names} in namespace {NAMESPACE}")
                say(f"kubeconfig: {env.kubeconfig}")
                say(f"logs: {env.log_dir}")
                live_view(env, seconds, stop)
                result = summary(env)
                print_summary(result)
                if not env.local_cluster:  # leave the cluster as it was
                    say(f"deleting namespace {NAMESPACE}")
                    kubectl(env.kubeconfig, "delete", "namespace", NAMESPACE, "--timeout=60s")
        finally:
            endpoint.stop()
            say("stopping every process the demo started")
    say("stopped; nothing the demo started is running")
    return result
