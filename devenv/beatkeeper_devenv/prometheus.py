"""A real Prometheus (Debian's `prometheus`) on loopback, scraping Beatkeeper's endpoints.

Used by the end-to-end metrics test and by `beatkeeper demo --prometheus`. It
scrapes every second, keeps its data in `workdir`, and loads the project's alert
rules, so the rules are evaluated against the live series too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.processes import Component, Supervisor, wait_until

RULES = Path(__file__).resolve().parents[2] / "charts" / "beatkeeper" / "files"
RULES_FILE = RULES / "prometheus-rules.yaml"


class PrometheusMissing(RuntimeError):
    pass


def pods_job(targets_file: Path) -> dict[str, Any]:
    """Pods found by whoever keeps `targets_file` current (file-based discovery: Debian's
    build of Prometheus has no Kubernetes discovery)."""
    return {
        "job_name": "pods",
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "2s"}],
    }


def write_targets(path: Path, pods: Sequence[Mapping[str, Any]]) -> int:
    """Write the scrape targets of the pods with prometheus.io/scrape annotations, in
    Prometheus's file_sd format (atomically); returns how many."""
    groups = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        notes = meta.get("annotations") or {}
        if notes.get("prometheus.io/scrape") != "true" or status.get("phase") != "Running":
            continue
        if not status.get("podIP"):
            continue
        labels = {
            "kubernetes_namespace": meta["namespace"],
            "pod": meta["name"],
            "component": (meta.get("labels") or {}).get("app.kubernetes.io/component", ""),
            "__metrics_path__": notes.get("prometheus.io/path", "/metrics"),
        }
        port = notes.get("prometheus.io/port", "80")
        groups.append({"targets": [f"{status['podIP']}:{port}"], "labels": labels})
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(groups))
    partial.rename(path)
    return len(groups)


def config(
    targets: Mapping[str, Sequence[str]], rules: Path | None, targets_file: Path | None = None
) -> dict[str, Any]:
    """One job per component (`targets`: host:port addresses), and with `targets_file`
    a job of the pods listed there."""
    jobs: list[dict[str, Any]] = [
        {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
        for job, addresses in targets.items()
    ]
    if targets_file is not None:
        jobs.append(pods_job(targets_file))
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)] if rules else [],
        "scrape_configs": jobs,
    }


def start_prometheus(
    supervisor: Supervisor,
    workdir: Path,
    targets: Mapping[str, Sequence[str]],
    *,
    executable: str = "prometheus",
    port: int | None = None,
    rules: Path | None = RULES_FILE,
    targets_file: Path | None = None,
) -> tuple[Component, str]:
    """Start Prometheus on 127.0.0.1; return the component and its base URL."""
    if shutil.which(executable) is None:
        raise PrometheusMissing(
            f"{executable} not found; install it with: apt-get install prometheus"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config(targets, rules, targets_file)))
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    component = supervisor.start(
        "prometheus",
        [
            executable,
            f"--config.file={path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
    )
    wait_until(component, lambda: _ready(url), timeout=60)
    return component, url


# S310 below: every URL is the http:// one start_prometheus built.


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except OSError:
        return False


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant PromQL query; the result vector."""
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(address, timeout=10) as answer:  # noqa: S310
        body = json.loads(answer.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def value(url: str, expr: str) -> float | None:
    """The single value of an instant query (None when the vector is empty)."""
    result = query(url, expr)
    if not result:
        return None
    if len(result) > 1:
        raise RuntimeError(f"{expr}: {len(result)} series, expected one")
    return float(result[0]["value"][1])


def targets(url: str) -> list[dict[str, Any]]:
    """The active scrape targets, as Prometheus reports them."""
    with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=10) as answer:  # noqa: S310
        body = json.loads(answer.read())
    found: list[dict[str, Any]] = body["data"]["activeTargets"]
    return found


def targets_up(url: str) -> dict[str, str]:
    """Each scrape target's job and health (up, down, unknown)."""
    return {t["labels"]["job"]: t["health"] for t in targets(url)}


# The dashboard's key panels, as Prometheus graph panels (the README's screenshot).
SCREENSHOT_QUERIES = (
    "sum by (state) (increase(beatkeeper_scheduledtask_runs_total[2m]))",
    "sum by (workerpool) (beatkeeper_pool_backlog)",
    "sum by (workerpool) (beatkeeper_pool_replicas_desired)",
    "sum by (task, state) (rate(beatkeeper_worker_runs_finished_total[1m]) * 60)",
    "histogram_quantile(0.99, sum by (le) "
    "(rate(beatkeeper_beat_fire_lateness_seconds_bucket[1m])))",
)


def graph_url(url: str, queries: Sequence[str], minutes: int = 5) -> str:
    params: dict[str, str] = {}
    for i, expr in enumerate(queries):
        params.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": f"{minutes}m"})
    return f"{url}/graph?{urllib.parse.urlencode(params)}"


def screenshot(
    url: str, path: Path, queries: Sequence[str] = SCREENSHOT_QUERIES, chromium: str = "chromium"
) -> Path:
    """Render Prometheus's graph page for `queries` with headless Chromium into `path` (PNG).

    Chromium loads only the local Prometheus page (no other network, no profile kept).
    """
    if shutil.which(chromium) is None:
        raise PrometheusMissing(f"{chromium} not found; install it with: apt-get install chromium")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="beatkeeper-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",  # root here; the page is our own Prometheus on loopback
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                # Tall enough for every panel: a page taller than the window scrolls to
                # the focused query field and the shot misses the top.
                f"--window-size=1400,{160 + 760 * len(queries)}",
                "--virtual-time-budget=15000",
                f"--screenshot={path}",
                graph_url(url, queries),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return path
