"""The operator's /metrics content: per-object state read at scrape time, and its counters."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from beatkeeper.operator.metrics import OperatorMetrics, StateCollector
from beatkeeper.operator.settings import OperatorSettings
from beatkeeper_beat.settings import BeatSettings
from beatkeeper_worker.settings import WorkerSettings

TASK = {
    "status": {
        "nextScheduleTime": "2026-03-01T00:05:00Z",
        "lastScheduleTime": "2026-03-01T00:00:00Z",
        "lastSuccessfulTime": "2026-02-28T23:55:00Z",
        "active": ["ns/report@2026-03-01T00:00:00Z"],
        "succeeded": 7,
        "failed": 2,
        "missed": 1,
        "retries": 4,
        "consecutiveFailures": 2,
        "conditions": [{"type": "Stalled", "status": "False", "reason": "Scheduled"}],
    }
}
BROKEN = {
    "status": {"conditions": [{"type": "Stalled", "status": "True", "reason": "InvalidSpec"}]}
}
POOL = {"backlog": 12, "desiredReplicas": 3, "replicas": 2, "readyReplicas": 1, "maxReplicas": 3}


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def registry_with(armed: object = 5) -> CollectorRegistry:
    def entries() -> int:
        if isinstance(armed, Exception):
            raise armed
        return int(armed)  # type: ignore[call-overload]

    registry = CollectorRegistry()
    registry.register(
        StateCollector(
            tasks=lambda: {("ns", "report"): TASK, ("ns", "broken"): BROKEN},
            pools=lambda: {("ns", "p"): POOL},
            armed=entries,
            records=lambda: (3, 1, 0),
        )
    )
    return registry


def test_each_scheduled_task_and_pool_is_a_labelled_series() -> None:
    found = scrape(registry_with())
    report = (("namespace", "ns"), ("scheduledtask", "report"))
    assert found[("beatkeeper_scheduledtask_next_schedule_time_seconds", report)] == 1772323500
    assert found[("beatkeeper_scheduledtask_active_runs", report)] == 1
    assert found[("beatkeeper_scheduledtask_runs_total", (*report, ("state", "Succeeded")))] == 7
    assert found[("beatkeeper_scheduledtask_runs_total", (*report, ("state", "Missed")))] == 1
    assert found[("beatkeeper_scheduledtask_retries_total", report)] == 4
    assert found[("beatkeeper_scheduledtask_consecutive_failures", report)] == 2
    stalled = (("kind", "ScheduledTask"), ("reason", "InvalidSpec"))
    assert found[("beatkeeper_operator_objects_stalled", stalled)] == 1
    pool = (("namespace", "ns"), ("workerpool", "p"))
    assert found[("beatkeeper_pool_backlog", pool)] == 12
    assert found[("beatkeeper_pool_replicas_ready", pool)] == 1
    assert found[("beatkeeper_pool_replicas_max", pool)] == 3
    assert ("beatkeeper_pool_replicas_min", pool) not in found  # a bound the pool has not
    assert found[("beatkeeper_operator_entries_armed", ())] == 5
    assert found[("beatkeeper_operator_run_records_lag", ())] == 3


def test_redis_away_drops_only_the_redis_series() -> None:
    found = scrape(registry_with(armed=redis.ConnectionError("refused")))
    assert ("beatkeeper_operator_entries_armed", ()) not in found
    assert ("beatkeeper_pool_backlog", (("namespace", "ns"), ("workerpool", "p"))) in found


def test_counters_are_labelled_by_kind_and_reason() -> None:
    registry = CollectorRegistry()
    counted = OperatorMetrics(registry)
    counted.errors.labels("ScheduledTask", "StatusWriteFailed").inc()
    counted.scale_events.labels("ns", "p", "up").inc(2)
    with counted.duration.labels("WorkerPool").time():
        pass
    found = scrape(registry)
    errors = (("kind", "ScheduledTask"), ("reason", "StatusWriteFailed"))
    assert found[("beatkeeper_operator_reconcile_errors_total", errors)] == 1
    scale = (("direction", "up"), ("namespace", "ns"), ("workerpool", "p"))
    assert found[("beatkeeper_pool_scale_events_total", scale)] == 2
    assert (
        found[("beatkeeper_operator_reconcile_duration_seconds_count", (("kind", "WorkerPool"),))]
        == 1
    )


def test_metrics_ports_and_listen_addresses_from_the_environment() -> None:
    env = {"BEATKEEPER_METRICS_PORT": "9808", "BEATKEEPER_METRICS_LISTEN": "0.0.0.0"}
    worker = WorkerSettings.from_env(env)
    assert (worker.metrics_port, worker.metrics_listen) == (9808, "0.0.0.0")
    assert WorkerSettings.from_env({}).metrics_listen == "127.0.0.1"
    assert BeatSettings.from_env({"BEATKEEPER_BEAT_METRICS_PORT": "9091"}).metrics_port == 9091
    assert OperatorSettings.from_env({"BEATKEEPER_METRICS_PORT": "9090"}).metrics_port == 9090
    with pytest.raises(ValueError, match="BEATKEEPER_METRICS_PORT='x' must be a port number"):
        WorkerSettings.from_env({"BEATKEEPER_METRICS_PORT": "x"})
    with pytest.raises(ValueError, match="between 0 \\(off\\) and 65535"):
        BeatSettings.from_env({"BEATKEEPER_BEAT_METRICS_PORT": "70000"})
