"""`make demo`: the whole system on real pods, installed the way users install it.

Starts a local control plane and a real node (or uses the cluster of a given
kubeconfig), builds and imports the images, installs the chart with
`helm install --wait` (operator, two beats and the bundled Redis, each Ready
through its own probes), applies examples/ into the `demo` namespace (Pod
Security "restricted"), whose pools run the examples' image built FROM the
worker image, shows a live view of `kubectl get st,wp` and the pods until the
time is up or Ctrl-C, prints what happened (runs by state, retries, scale
events, checks the health endpoint answered) and stops everything it started.

The burst example gets a `beatkeeper.dev/run-now` token when applied, so the
pool's scale-up and scale-down show in the first minute instead of waiting for
its schedule.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from beatkeeper_devenv.environment import Environment, local_environment
from beatkeeper_devenv.helm import Helm, ensure_helm
from beatkeeper_devenv.images import ensure_images
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.prometheus import (
    screenshot,
    start_prometheus,
    targets,
    value,
    write_targets,
)
from beatkeeper_devenv.settings import DevSettings

NAMESPACE = "demo"
RELEASE = "bk"
RELEASE_NAMESPACE = "beatkeeper-system"
BURST_TASK = "fan-out"
RUN_NOW = "beatkeeper.dev/run-now"
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
STATES = ("succeeded", "failed", "retries", "missed", "skipped")
Say = Callable[[str], None]


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


def example_documents(examples: Path) -> list[dict[str, Any]]:
    """The example manifests, pools first; the burst task gets a run-now token."""
    documents: list[dict[str, Any]] = []
    for path in sorted(examples.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in documents:
        meta = doc.setdefault("metadata", {})
        if doc["kind"] == "ScheduledTask" and meta["name"] == BURST_TASK:
            meta.setdefault("annotations", {})[RUN_NOW] = f"demo-{int(time.time())}"
    return sorted(documents, key=lambda doc: doc["kind"] != "WorkerPool")


def install_chart(env: Environment, helm: Helm, chart: Path, say: Say) -> str:
    """`helm install --wait` with the bundled Redis; returns the Redis URL it made."""
    started = time.monotonic()
    say(f"helm install {RELEASE} {chart.relative_to(chart.parents[1])} -n {RELEASE_NAMESPACE}")
    kubectl(env.kubeconfig, "create", "namespace", RELEASE_NAMESPACE, check=False)
    kubectl(env.kubeconfig, "label", "--overwrite", "namespace", RELEASE_NAMESPACE, RESTRICTED)
    helm(
        "install",
        RELEASE,
        str(chart),
        "-n",
        RELEASE_NAMESPACE,
        "--set",
        "redis.bundled.enabled=true",
        "--wait",
        "--timeout=5m",
    )
    say(f"chart installed and Ready in {time.monotonic() - started:.0f} s")
    secret = kubectl(
        env.kubeconfig,
        "get",
        "secret",
        f"{RELEASE}-beatkeeper-redis",
        "-n",
        RELEASE_NAMESPACE,
        "-o",
        "jsonpath={.data.url}",
    ).stdout
    return base64.b64decode(secret).decode()


def prepare_namespace(env: Environment, redis_url: str) -> None:
    """The team namespace, as a user makes it: restricted, with the pools' broker Secret."""
    kubectl(env.kubeconfig, "create", "namespace", NAMESPACE, check=False)
    kubectl(env.kubeconfig, "label", "--overwrite", "namespace", NAMESPACE, RESTRICTED)
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
    """Redraw `kubectl get st,wp` and the pods until the deadline or a stop signal.

    In a terminal the screen is redrawn every 2 s; otherwise (CI, a pipe) a
    table is appended every 10 s.
    """
    interactive = sys.stdout.isatty()
    deadline = time.monotonic() + seconds if seconds else None
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        table = kubectl(env.kubeconfig, "get", "st,wp", "-n", NAMESPACE, check=False).stdout
        pods = kubectl(env.kubeconfig, "get", "pods", "-n", NAMESPACE, check=False).stdout
        left = f"{deadline - time.monotonic():.0f} s left" if deadline else "Ctrl-C to stop"
        stamp = time.strftime("%H:%M:%S")
        header = f"Beatkeeper demo: kubectl get st,wp -n {NAMESPACE}  ({stamp}, {left})"
        pods_header = f"kubectl get pods -n {NAMESPACE}"
        sys.stdout.write(
            ("\033[H\033[J" if interactive else "\n")
            + f"{header}\n\n{table}\n{pods_header}\n{pods}"
        )
        sys.stdout.flush()
        wait = 2.0 if interactive else 10.0
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        stop.wait(wait)


def _get(env: Environment, *args: str) -> list[dict[str, Any]]:
    found = kubectl(env.kubeconfig, "get", *args, "-n", NAMESPACE, "-o", "json")
    return list(json.loads(found.stdout)["items"])


def endpoint_hits(env: Environment) -> int:
    """Checks the health endpoint answered, counted from its own log."""
    logs = kubectl(
        env.kubeconfig, "logs", "deploy/health-endpoint", "-n", NAMESPACE, check=False
    ).stdout
    return sum('"GET /health' in line for line in logs.splitlines())


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
    # Which runtime ran the pods' containers (containerd:// on the local node).
    runtimes = sorted(
        {
            status.get("containerID", "").split("://", 1)[0]
            for pod in _get(env, "pods")
            for status in (pod.get("status") or {}).get("containerStatuses") or []
            if status.get("containerID")
        }
    )
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
        "endpoint_hits": endpoint_hits(env),
        "container_runtimes": runtimes,
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
    print(f"the health endpoint answered {result['endpoint_hits']} checks")
    if "prometheus" in result:
        print(
            f"prometheus ({result['prometheus']}): {result['targets_up']} targets up; runs "
            + ", ".join(f"{k} {v:.0f}" for k, v in result["runs_by_state_in_prometheus"].items())
        )
    print(f"scale events: {len(result['scale_events'])}")
    for message in result["scale_events"][-8:]:
        print(f"  {message}")
    print(json.dumps({"demo": "summary", **result}))


def _pods(env: Environment) -> list[dict[str, Any]]:
    found = kubectl(env.kubeconfig, "get", "pods", "-A", "-o", "json", check=False)
    return list(json.loads(found.stdout)["items"]) if found.returncode == 0 else []


def metrics_endpoints(env: Environment) -> list[str]:
    """The /metrics URL of every pod that says where it serves them (its scrape annotations)."""
    urls = []
    for pod in _pods(env):
        meta, status = pod["metadata"], pod.get("status") or {}
        notes = meta.get("annotations") or {}
        if notes.get("prometheus.io/scrape") != "true" or not status.get("podIP"):
            continue
        path = notes.get("prometheus.io/path", "/metrics")
        urls.append(f"{meta['namespace']}/{meta['name']}: http://{status['podIP']}:"
                    f"{notes.get('prometheus.io/port', '80')}{path}")  # fmt: skip
    return sorted(urls)


def start_demo_prometheus(env: Environment, workdir: Path, say: Say, stop: threading.Event) -> str:
    """Debian's Prometheus on 127.0.0.1; a thread keeps its target list at the annotated
    pods (workers come and go as pools scale)."""
    workdir.mkdir(parents=True, exist_ok=True)
    targets_file = workdir / "pods.json"
    write_targets(targets_file, _pods(env))
    _, url = start_prometheus(env.supervisor, workdir, {}, targets_file=targets_file)

    def follow() -> None:
        while not stop.wait(2.0):
            try:
                write_targets(targets_file, _pods(env))
            except OSError:  # the demo is over: its directory is gone
                return

    threading.Thread(target=follow, name="prometheus-targets", daemon=True).start()
    say(f"prometheus: {url} (targets: {url}/targets, alerts: {url}/alerts)")
    return url


def prometheus_summary(url: str) -> dict[str, Any]:
    up = [t for t in targets(url) if t["health"] == "up"]
    totals = {
        state: value(url, f'sum(beatkeeper_scheduledtask_runs_total{{state="{state}"}})') or 0
        for state in ("Succeeded", "Failed", "Missed", "Skipped")
    }
    return {"prometheus": url, "targets_up": len(up), "runs_by_state_in_prometheus": totals}


def run_demo(
    settings: DevSettings,
    say: Say,
    *,
    seconds: float | None,
    external_kubeconfig: Path | None = None,
    prometheus: bool = False,
    screenshot_to: Path | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary. Every process it starts is stopped on return."""
    repo = settings.crds_dir.parent
    kubeconfig = None if external_kubeconfig else settings.state_dir / "demo-kubeconfig"
    if external_kubeconfig is not None:
        images = ensure_images(settings, say)
        archives = ", ".join(str(built.archive) for built in images.values())
        say(f"using an existing cluster: its nodes need the images (archives: {archives})")
    with (
        local_environment(
            settings,
            redis=False,
            node=external_kubeconfig is None,
            kubeconfig=kubeconfig,
            external_kubeconfig=external_kubeconfig,
            progress=say,
        ) as env,
        tempfile.TemporaryDirectory(prefix="beatkeeper-helm-") as helm_home,
    ):
        helm = Helm(ensure_helm(settings, say), env.kubeconfig, Path(helm_home))
        try:
            with Stopper().installed() as stop:
                redis_url = install_chart(env, helm, repo / "charts" / "beatkeeper", say)
                prepare_namespace(env, redis_url)
                documents = example_documents(repo / "examples")
                apply_examples(env, documents)
                names = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
                say(f"applied {names} in namespace {NAMESPACE}")
                say(f"kubeconfig: {env.kubeconfig}")
                say(f"logs: {env.log_dir}")
                for endpoint in metrics_endpoints(env):
                    say(f"metrics: {endpoint}")
                scraper = None
                if prometheus or screenshot_to is not None:
                    workdir = Path(helm_home) / "prometheus"
                    scraper = start_demo_prometheus(env, workdir, say, stop)
                live_view(env, seconds, stop)
                result = summary(env)
                if scraper is not None:
                    result.update(prometheus_summary(scraper))
                if scraper is not None and screenshot_to is not None:
                    say(
                        f"screenshot of the Prometheus graphs: {screenshot(scraper, screenshot_to)}"
                    )
                print_summary(result)
        finally:
            if not env.local_cluster:  # leave the cluster as it was
                say(f"deleting namespace {NAMESPACE} and the release")
                kubectl(
                    env.kubeconfig, "delete", "namespace", NAMESPACE, "--timeout=120s", check=False
                )
                helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", check=False)
            say("stopping every process the demo started")
    say("stopped; nothing the demo started is running")
    return result
