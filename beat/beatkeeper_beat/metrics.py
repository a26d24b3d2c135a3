"""Prometheus metrics of beat (one process), served on `BEATKEEPER_BEAT_METRICS_PORT`.

Label sets are bounded: `trigger` is a fixed word (schedule, catch-up, run-now).
"""

from __future__ import annotations

from typing import Any

LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class BeatMetrics:
    """What beat counts (one process)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.fires = Counter(
            "beatkeeper_beat_fires_total",
            "Runs beat published, by trigger (schedule, catch-up).",
            ["trigger"],
        )
        self.lateness = Histogram(
            "beatkeeper_beat_fire_lateness_seconds",
            "How late beat published each scheduled run after its due time (slot plus "
            "jitter; catch-up runs are late by design and not observed).",
            buckets=LATENESS_BUCKETS,
        )
        self.missed = Counter(
            "beatkeeper_beat_missed_slots_total",
            "Slots beat recorded Missed instead of running them (outside catchUp).",
        )
        self.lock_held = Gauge(
            "beatkeeper_beat_lock_held",
            "1 while this beat replica holds the HA lock (and fires), else 0.",
        )
        self.lock_takeovers = Counter(
            "beatkeeper_beat_lock_acquisitions_total",
            "Times this replica took the HA lock (at start, or over from another replica).",
        )


_beat: BeatMetrics | None = None


def beat() -> BeatMetrics:
    """The one set of beat metrics of this process."""
    global _beat  # noqa: PLW0603 - one set per process
    if _beat is None:
        _beat = BeatMetrics()
    return _beat


def serve(port: int, listen: str) -> Any:
    """Serve /metrics (the default registry) on `listen:port` from a daemon thread."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=listen)
    return server
