"""A real worker's /metrics: counted in the pool's processes (prefork: prometheus-client's
multiprocess mode), served by the main process, parsed with prometheus-client's own parser."""

from __future__ import annotations

import pytest
from worker_helpers import Runs, Workers, scrape

from beatkeeper_core.contract import RetryPolicy, RunState
from beatkeeper_devenv.cluster import free_port


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_metrics_count_runs_by_task_and_state(
    workers: Workers, runs: Runs, pool: str
) -> None:
    port = free_port()
    workers.start(
        BEATKEEPER_WORKER_POOL=pool,
        BEATKEEPER_METRICS_PORT=str(port),
        BEATKEEPER_METRICS_DIR=str(workers.tmp / "metrics"),
    )
    ok = [runs.envelope(kwargs={"key": runs.key(f"ok{i}")}) for i in range(3)]
    retried = runs.envelope(
        kwargs={"key": runs.key("bad"), "fail_times": 5},
        retry=RetryPolicy(max_retries=2, initial_seconds=0.1, max_seconds=0.2),
    )
    unknown = runs.envelope("bk_test.nope")
    for envelope in [*ok, retried, unknown]:
        runs.publish(envelope)
    for envelope in ok:
        runs.wait_for(envelope.run_id, RunState.SUCCEEDED)
    runs.wait_for(retried.run_id, RunState.FAILED)
    runs.wait_for(unknown.run_id, RunState.FAILED)
    runs.publish(ok[0])  # published again: the claim drops the duplicate

    def dropped() -> bool:
        return (
            scrape(port).get(
                ("beatkeeper_worker_deliveries_dropped_total", (("why", "finished"),)), 0
            )
            >= 1
        )

    runs.wait_until(dropped, 15, "the duplicate delivery is counted")
    found = scrape(port)
    work = (("task", "bk_test.work"),)

    def value(name: str, *labels: tuple[str, str]) -> float:
        return found.get((name, tuple(sorted(labels))), 0.0)

    assert value("beatkeeper_worker_runs_started_total", *work) == 6  # 3 + 1 attempt + 2 retries
    assert value("beatkeeper_worker_runs_finished_total", *work, ("state", "Succeeded")) == 3
    assert value("beatkeeper_worker_runs_finished_total", *work, ("state", "Retrying")) == 2
    assert value("beatkeeper_worker_runs_finished_total", *work, ("state", "Failed")) == 1
    assert value("beatkeeper_worker_retries_total", *work) == 2
    assert value("beatkeeper_worker_run_duration_seconds_count", *work) == 6
    assert value("beatkeeper_worker_runs_refused_total", ("reason", "TaskNotRegistered")) == 1
    assert not any(
        name.startswith("beatkeeper_worker_runs_started")
        and dict(labels).get("task") == "bk_test.nope"
        for name, labels in found
    )  # a name the worker does not register never becomes a label value
