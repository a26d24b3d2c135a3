"""The operator's Prometheus metrics, served on `BEATKEEPER_METRICS_PORT` (`/metrics`).

Two kinds:
- what the operator does, counted as it happens (`OperatorMetrics`): reconciles
  and their errors by kind and reason, reconcile durations, scale events, run-now
  requests, run records applied;
- what the objects say, read at scrape time (`StateCollector`), as
  kube-state-metrics does for CronJobs: per ScheduledTask its next, last and last
  successful schedule times, active runs, runs by final state, retries; per
  WorkerPool its backlog and desired, current and ready replicas; objects
  Stalled by reason; entries armed in Redis; the run-record consumer's lag and
  the parked records.

Label sets are bounded by the objects that exist (namespace and name, as
kube-state-metrics labels them) and by fixed words (kind, reason, state,
direction).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from beatkeeper_core import contract

logger = logging.getLogger(__name__)

Key = tuple[str, str]
Objects = Callable[[], Mapping[Key, Mapping[str, Any]]]
RUN_STATES = {
    "succeeded": "Succeeded",
    "failed": "Failed",
    "missed": "Missed",
    "skipped": "Skipped",
}
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OperatorMetrics:
    """Counters and histograms of what the operator does, in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.reconciles = Counter(
            "beatkeeper_operator_reconciles_total",
            "Objects reconciled, by kind and result (ok, error).",
            ["kind", "result"],
            registry=registry,
        )
        self.errors = Counter(
            "beatkeeper_operator_reconcile_errors_total",
            "Reconcile errors confined to one object, by kind and reason (ReconcileFailed, "
            "PlanningFailed, EntryWriteFailed, StatusWriteFailed, RunRecordsNotApplied, ...).",
            ["kind", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "beatkeeper_operator_reconcile_duration_seconds",
            "How long one reconcile took: a batch of ScheduledTasks, or one WorkerPool.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.scale_events = Counter(
            "beatkeeper_pool_scale_events_total",
            "Replica changes the operator made, by pool and direction (up, down).",
            ["namespace", "workerpool", "direction"],
            registry=registry,
        )
        self.run_now = Counter(
            "beatkeeper_operator_run_now_total",
            "Runs started by a beatkeeper.dev/run-now token.",
            registry=registry,
        )
        self.records_applied = Counter(
            "beatkeeper_operator_run_records_applied_total",
            "Run records folded into ScheduledTask status.",
            registry=registry,
        )
        self.records_rejected = Counter(
            "beatkeeper_operator_run_records_rejected_total",
            "Run records ignored: a namespace's stream spoke of another namespace's object "
            "(Redis tenancy).",
            ["reason"],
            registry=registry,
        )


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    try:
        return contract.parse_time(value).timestamp()
    except ValueError:
        return None


def _stalled_reason(status: Mapping[str, Any]) -> str | None:
    for item in status.get("conditions") or ():
        if item.get("type") == "Stalled" and item.get("status") == "True":
            return str(item.get("reason") or "Unknown")
    return None


class StateCollector(Collector):
    """Gauges and counters read from the operator's indexes and Redis at each scrape."""

    def __init__(
        self,
        tasks: Objects,
        pools: Callable[[], Mapping[Key, Mapping[str, Any]]],
        armed: Callable[[], int],
        records: Callable[[], tuple[int, int, int]],
    ) -> None:
        self._tasks = tasks
        self._pools = pools  # (namespace, name) -> the pool's status as last written
        self._armed = armed
        self._records = records  # (lag, pending, parked)

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        yield from self._task_families()
        yield from self._pool_families()
        yield from self._redis_families()

    def _task_families(self) -> Iterator[Any]:
        labels = ["namespace", "scheduledtask"]
        times = {
            "next": GaugeMetricFamily(
                "beatkeeper_scheduledtask_next_schedule_time_seconds",
                "When the next run is due (UNIX time).",
                labels=labels,
            ),
            "last": GaugeMetricFamily(
                "beatkeeper_scheduledtask_last_schedule_time_seconds",
                "The slot of the latest run (UNIX time).",
                labels=labels,
            ),
            "success": GaugeMetricFamily(
                "beatkeeper_scheduledtask_last_successful_time_seconds",
                "When a run last succeeded (UNIX time).",
                labels=labels,
            ),
        }
        active = GaugeMetricFamily(
            "beatkeeper_scheduledtask_active_runs", "Runs in flight.", labels=labels
        )
        runs = CounterMetricFamily(
            "beatkeeper_scheduledtask_runs",
            "Finished runs, by final state (Succeeded, Failed, Missed, Skipped).",
            labels=[*labels, "state"],
        )
        retries = CounterMetricFamily(
            "beatkeeper_scheduledtask_retries", "Retries made, over all runs.", labels=labels
        )
        failing = GaugeMetricFamily(
            "beatkeeper_scheduledtask_consecutive_failures",
            "Runs failed in a row since the last success.",
            labels=labels,
        )
        stalled: dict[tuple[str, str], int] = {}
        for (namespace, name), body in list(self._tasks().items()):
            status = body.get("status") or {}
            key = [namespace, name]
            for field, family in zip(
                ("nextScheduleTime", "lastScheduleTime", "lastSuccessfulTime"),
                times.values(),
                strict=True,
            ):
                when = _timestamp(status.get(field))
                if when is not None:
                    family.add_metric(key, when)
            active.add_metric(key, len(status.get("active") or ()))
            for field, state in RUN_STATES.items():
                runs.add_metric([*key, state], float(status.get(field) or 0))
            retries.add_metric(key, float(status.get("retries") or 0))
            failing.add_metric(key, float(status.get("consecutiveFailures") or 0))
            reason = _stalled_reason(status)
            if reason is not None:
                stalled[("ScheduledTask", reason)] = stalled.get(("ScheduledTask", reason), 0) + 1
        yield from (*times.values(), active, runs, retries, failing)
        for pool_status in list(self._pools().values()):
            reason = _stalled_reason(pool_status)
            if reason is not None:
                stalled[("WorkerPool", reason)] = stalled.get(("WorkerPool", reason), 0) + 1
        family = GaugeMetricFamily(
            "beatkeeper_operator_objects_stalled",
            "Objects whose Stalled condition is True, by kind and reason.",
            labels=["kind", "reason"],
        )
        for (kind, reason), count in sorted(stalled.items()):
            family.add_metric([kind, reason], count)
        yield family

    def _pool_families(self) -> Iterator[Any]:
        labels = ["namespace", "workerpool"]
        families = {
            "backlog": GaugeMetricFamily(
                "beatkeeper_pool_backlog",
                "Queued, reserved, running and due-retry runs of the pool's queue.",
                labels=labels,
            ),
            "desiredReplicas": GaugeMetricFamily(
                "beatkeeper_pool_replicas_desired", "Replicas the pool wants now.", labels=labels
            ),
            "replicas": GaugeMetricFamily(
                "beatkeeper_pool_replicas_current", "Pods of the pool's Deployment.", labels=labels
            ),
            "readyReplicas": GaugeMetricFamily(
                "beatkeeper_pool_replicas_ready", "Ready pods of the pool.", labels=labels
            ),
            "active": GaugeMetricFamily(
                "beatkeeper_pool_active_runs", "Runs executing now.", labels=labels
            ),
        }
        bounds = {
            "minReplicas": GaugeMetricFamily(
                "beatkeeper_pool_replicas_min",
                "spec.autoscaling.minReplicas of an autoscaled pool.",
                labels=labels,
            ),
            "maxReplicas": GaugeMetricFamily(
                "beatkeeper_pool_replicas_max",
                "spec.autoscaling.maxReplicas of an autoscaled pool.",
                labels=labels,
            ),
        }
        for (namespace, name), status in list(self._pools().items()):
            for field, family in families.items():
                family.add_metric([namespace, name], float(status.get(field) or 0))
            for field, family in bounds.items():
                if field in status:
                    family.add_metric([namespace, name], float(status[field]))
        yield from (*families.values(), *bounds.values())

    def _redis_families(self) -> Iterator[Any]:
        try:
            armed = self._armed()
            lag, pending, parked = self._records()
        except redis.RedisError as error:
            logger.warning("metrics from Redis skipped this scrape: %s", error)
            return
        yield GaugeMetricFamily(
            "beatkeeper_operator_entries_armed",
            "redbeat entries in Redis's schedule (one per armed ScheduledTask).",
            value=armed,
        )
        yield GaugeMetricFamily(
            "beatkeeper_operator_run_records_lag",
            "Run records written by workers and beat that the operator has not read yet.",
            value=lag,
        )
        yield GaugeMetricFamily(
            "beatkeeper_operator_run_records_pending",
            "Run records read but not yet applied to status (held back or in progress).",
            value=pending,
        )
        yield GaugeMetricFamily(
            "beatkeeper_operator_run_records_parked",
            "Run records set aside after repeated failures (stream beatkeeper:runs:parked).",
            value=parked,
        )


class PoolStatuses:
    """The latest status the operator wrote per pool, for the scrape (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statuses: dict[Key, dict[str, Any]] = {}

    def update(self, key: Key, status: Mapping[str, Any]) -> None:
        with self._lock:
            self._statuses.setdefault(key, {}).update(status)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._statuses.pop(key, None)

    def snapshot(self) -> dict[Key, dict[str, Any]]:
        with self._lock:
            return {key: dict(value) for key, value in self._statuses.items()}


def serve(registry: CollectorRegistry, port: int, listen: str) -> Any:
    """Serve /metrics on `port` from a daemon thread; returns the server (to shut down)."""
    server, _ = start_http_server(port, addr=listen, registry=registry)
    return server
