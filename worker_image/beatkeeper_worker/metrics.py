"""Prometheus metrics of a worker, served on `BEATKEEPER_METRICS_PORT`.

A prefork worker counts in its pool's child processes, so it runs in
prometheus-client's multiprocess mode: `enable` points PROMETHEUS_MULTIPROC_DIR at
an empty directory (in the pod, under the /tmp emptyDir) before prometheus_client
is imported, the children inherit it, and the main process serves what every
process wrote. A threads worker counts in one process and serves the default
registry.

Label sets are bounded: `task` is a name the worker registers (anything else is
counted as `unregistered`), `state` a run state, `why` a fixed word.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNREGISTERED = "unregistered"
# Runs last from milliseconds to hours.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)


def enable(metrics_dir: Path | None) -> None:
    """Before prometheus_client is imported: counting across processes in `metrics_dir`
    (emptied: counts start at zero with the process), or in this process alone (None)."""
    if metrics_dir is None:
        return
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)


def serve(port: int, listen: str) -> Any:
    """Serve /metrics on `listen:port` from a daemon thread; returns the server."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _ = start_http_server(port, addr=listen, registry=registry)
    return server


class WorkerMetrics:
    """What a worker counts; created lazily in each process that counts."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.runs_started = Counter(
            "beatkeeper_worker_runs_started_total",
            "Attempts a worker started, by the user's task name.",
            ["task"],
        )
        self.runs_finished = Counter(
            "beatkeeper_worker_runs_finished_total",
            "Attempts a worker finished and recorded, by task and the state they left the "
            "run in (Succeeded, Failed, Retrying).",
            ["task", "state"],
        )
        self.run_duration = Histogram(
            "beatkeeper_worker_run_duration_seconds",
            "How long each attempt of the user's task ran.",
            ["task"],
            buckets=DURATION_BUCKETS,
        )
        self.retries = Counter(
            "beatkeeper_worker_retries_total",
            "Attempts that failed and were scheduled to be retried, by task.",
            ["task"],
        )
        self.refused = Counter(
            "beatkeeper_worker_runs_refused_total",
            "Runs refused before they started (TaskNotAllowed, TaskNotRegistered).",
            ["reason"],
        )
        self.dropped = Counter(
            "beatkeeper_worker_deliveries_dropped_total",
            "Deliveries the claim dropped without running them (a duplicate: the run is "
            "running or done, or skipped, missed, superseded), by why.",
            ["why"],
        )
        self.renewals_failed = Counter(
            "beatkeeper_worker_lease_renewals_failed_total",
            "Lease renewal rounds that failed (Redis away); past the fence, runs stop.",
        )
        self.leases_lost = Counter(
            "beatkeeper_worker_leases_lost_total",
            "Runs stopped because another worker took their lease over.",
        )
        self.recovered = Counter(
            "beatkeeper_worker_runs_recovered_total",
            "Runs the sweeper republished, by why (lease expired: their worker died; "
            "unclaimed: their message was lost).",
            ["why"],
        )
        self.retries_promoted = Counter(
            "beatkeeper_worker_retries_promoted_total",
            "Retries whose delay passed and that the sweeper published.",
        )


_worker: WorkerMetrics | None = None


def worker() -> WorkerMetrics:
    """The worker metrics (a forked pool child counts in its own file: prometheus-client
    notices the new pid)."""
    global _worker  # noqa: PLW0603 - one set per process tree
    if _worker is None:
        _worker = WorkerMetrics()
    return _worker


def task_label(name: str, registered: Any) -> str:
    return name if name in registered else UNREGISTERED
