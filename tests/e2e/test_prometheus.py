"""A real Prometheus (Debian's package) scrapes the operator, beat and a worker of a
running system; PromQL says exactly what happened.

Known runs in the test's own namespace: three that succeed, one that fails after two
retries, one that misses its starting deadline; then a burst on an autoscaled pool
without workers. The per-object series (labelled with the namespace) and the test's
own worker are exact; beat is the session's, shared with other tests, so its counters
are compared with a baseline taken before.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import apply, eventually, get_json, hostless_pool
from e2e_helpers import scheduled_task as task

from beatkeeper_core import contract
from beatkeeper_core.publish import publish_runs
from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.processes import Supervisor
from beatkeeper_devenv.prometheus import start_prometheus, targets_up, value
from beatkeeper_worker.app import create_app
from beatkeeper_worker.runtime import runtime_for
from beatkeeper_worker.settings import WorkerSettings

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def prometheus(
    cluster: Any, operator: Any, beat: Any, beat_metrics_port: int, tmp_path: Path
) -> Iterator[tuple[str, int]]:
    """Prometheus scraping the operator, beat, and the worker port the test will use."""
    worker_port = free_port()
    supervisor = Supervisor(tmp_path / "logs")
    try:
        _, url = start_prometheus(
            supervisor,
            tmp_path / "prometheus",
            {
                "operator": [f"127.0.0.1:{operator.metrics_port}"],
                "beat": [f"127.0.0.1:{beat_metrics_port}"],
                "worker": [f"127.0.0.1:{worker_port}"],
            },
        )
        yield url, worker_port
    finally:
        supervisor.stop_all()


def at(seconds: float) -> str:
    return contract.format_slot(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))


def settled(kubeconfig: Path, namespace: str, name: str, state: str) -> Any:
    def check() -> dict[str, Any] | None:
        found = get_json(kubeconfig, "st", name, "-n", namespace).get("status", {})
        return found if (found.get("lastRun") or {}).get("state") == state else None

    check.__doc__ = f"st/{name}'s run is {state}"
    return eventually(check, timeout=60)


def test_prometheus_sees_exactly_the_runs_that_happened(
    kubeconfig: Path,
    namespace: str,
    workers: Any,
    redis_url: str,
    prometheus: tuple[str, int],
    tmp_path: Path,
) -> None:
    url, worker_port = prometheus

    def baselines_scraped() -> bool:
        """Prometheus has scraped the operator and beat (the baselines below are theirs)"""
        up = targets_up(url)
        parked = value(url, "beatkeeper_operator_run_records_parked")
        return up.get("beat") == up.get("operator") == "up" and parked is not None

    eventually(baselines_scraped, timeout=30)
    fires_before = value(url, 'sum(beatkeeper_beat_fires_total{trigger="schedule"})') or 0
    fired_before = value(url, "sum(beatkeeper_beat_fire_lateness_seconds_count)") or 0
    prompt = 'sum(beatkeeper_beat_fire_lateness_seconds_bucket{le="1.0"})'
    prompt_before = value(url, prompt) or 0
    # Other tests park records on purpose (test_isolation); none of this test's may be.
    parked_before = value(url, "beatkeeper_operator_run_records_parked") or 0

    apply(kubeconfig, namespace, hostless_pool())
    workers.start(
        namespace,
        BEATKEEPER_METRICS_PORT=str(worker_port),
        BEATKEEPER_METRICS_DIR=str(tmp_path / "worker-metrics"),
    )
    slot = at(6)
    for name in ("ok-1", "ok-2", "ok-3"):
        call = {"name": "e2e.count", "args": [f"{namespace}:{name}"]}
        apply(kubeconfig, namespace, task(name, at=slot, task=call))
    retry = {
        "maxRetries": 2,
        "backoff": {"initialSeconds": 0.2, "maxSeconds": 0.5},
        "jitter": False,
    }
    apply(kubeconfig, namespace, task("flaky", at=slot, retry=retry, task={"name": "e2e.fail"}))
    # A run due now on a pool whose worker only starts 5 s later, past its 1 s deadline.
    apply(kubeconfig, namespace, hostless_pool("idle"))
    apply(kubeconfig, namespace, task("late", pool="idle", at=slot, startingDeadlineSeconds=1,
                                      task={"name": "e2e.count", "args": ["x"]}))  # fmt: skip
    for name in ("ok-1", "ok-2", "ok-3"):
        settled(kubeconfig, namespace, name, "Succeeded")
    settled(kubeconfig, namespace, "flaky", "Failed")
    eventually(
        lambda: dt.datetime.now(dt.UTC) > contract.parse_slot(slot) + dt.timedelta(seconds=5), 20
    )
    workers.start(namespace, pool="idle")
    settled(kubeconfig, namespace, "late", "Missed")

    ns = f'namespace="{namespace}"'

    def scraped(expr: str, expected: float) -> bool:
        return value(url, expr) == expected

    # Per ScheduledTask, as kube-state-metrics shows CronJobs (from status, exact).
    checks = {
        f'sum(beatkeeper_scheduledtask_runs_total{{{ns},state="Succeeded"}})': 3,
        f'sum(beatkeeper_scheduledtask_runs_total{{{ns},state="Failed"}})': 1,
        f'sum(beatkeeper_scheduledtask_runs_total{{{ns},state="Missed"}})': 1,
        f"sum(beatkeeper_scheduledtask_retries_total{{{ns}}})": 2,
        f'beatkeeper_scheduledtask_consecutive_failures{{{ns},scheduledtask="flaky"}}': 1,
        f"count(beatkeeper_scheduledtask_last_successful_time_seconds{{{ns}}})": 3,
        # The test's own worker (prefork: counted in its pool processes).
        'beatkeeper_worker_runs_started_total{task="e2e.count"}': 3,
        'beatkeeper_worker_runs_started_total{task="e2e.fail"}': 3,
        'beatkeeper_worker_runs_finished_total{task="e2e.fail",state="Retrying"}': 2,
        'beatkeeper_worker_runs_finished_total{task="e2e.fail",state="Failed"}': 1,
        'beatkeeper_worker_retries_total{task="e2e.fail"}': 2,
        'beatkeeper_worker_run_duration_seconds_count{task="e2e.count"}': 3,
        # beat: the session's, so compared with the baseline.
        f'sum(beatkeeper_beat_fires_total{{trigger="schedule"}}) - {fires_before} >= bool 4': 1,
        f"sum(beatkeeper_beat_fire_lateness_seconds_count) - {fired_before} >= bool 4": 1,
        "sum(beatkeeper_beat_lock_held)": 1,
        f"beatkeeper_operator_run_records_parked - {parked_before}": 0,
    }
    for expr, expected in checks.items():
        check = lambda expr=expr, expected=expected: scraped(expr, expected)  # noqa: E731
        check.__doc__ = f"{expr} == {expected} (now {value(url, expr)})"
        eventually(check, timeout=20, interval=0.5)
    # Every scheduled fire since the baseline was published within a second of its due time
    # (the session's beat may have fired late before, in other tests' outages).
    fired = (value(url, "sum(beatkeeper_beat_fire_lateness_seconds_count)") or 0) - fired_before
    assert (value(url, prompt) or 0) - prompt_before == fired

    # A burst on an autoscaled pool with no worker: backlog and desired replicas follow.
    burst = hostless_pool("burst")
    burst["spec"].pop("replicas")
    burst["spec"]["autoscaling"] = {"maxReplicas": 3, "pollSeconds": 1}
    apply(kubeconfig, namespace, burst)
    eventually(
        lambda: value(url, f'beatkeeper_pool_replicas_max{{{ns},workerpool="burst"}}') == 3,
        timeout=30,
    )
    app = create_app(WorkerSettings(broker_url=redis_url))
    queue = contract.queue_name(namespace, "burst")
    base = dt.datetime.now(dt.UTC).replace(microsecond=0)
    publish_runs(
        app,
        [
            (
                contract.RunEnvelope.for_slot(
                    namespace, "burst", base + dt.timedelta(seconds=i),
                    contract.TaskCall(name="e2e.count", args=["b"]), contract.RunPolicy(),
                ),
                queue,
            )
            for i in range(20)
        ],
        registry=runtime_for(app).registry(),
    )  # fmt: skip
    app.close()
    pool = f'{ns},workerpool="burst"'
    for expr, expected in {
        f"beatkeeper_pool_backlog{{{pool}}}": 20,
        f"beatkeeper_pool_replicas_desired{{{pool}}}": 3,
        f'beatkeeper_pool_scale_events_total{{{pool},direction="up"}}': 1,
    }.items():
        check = lambda expr=expr, expected=expected: scraped(expr, expected)  # noqa: E731
        check.__doc__ = f"{expr} == {expected} (now {value(url, expr)})"
        eventually(check, timeout=30, interval=0.5)
