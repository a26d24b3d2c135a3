"""Helpers for the worker tier: starting real workers, publishing runs, reading records.

Workers run `python -m beatkeeper_worker` against the session's Redis with the
test tasks of worker_tasks.py and scaled-down lease/sweep timings (the
assertions stay the production ones). `Runs` publishes runs to one queue and
reads their run records back from the stream.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from beatkeeper_core import keys
from beatkeeper_core.contract import (
    RetryPolicy,
    RunEnvelope,
    RunPolicy,
    RunRecord,
    RunState,
    TaskCall,
    queue_name,
    stream_records,
)
from beatkeeper_core.publish import publish_run, send_run
from beatkeeper_devenv.processes import Component, Supervisor, wait_until
from beatkeeper_worker.app import create_app
from beatkeeper_worker.runtime import runtime_for
from beatkeeper_worker.settings import WorkerSettings

HERE = Path(__file__).resolve().parent

# Scaled down from 15/5/1 s so recovery tests take seconds, not a minute.
FAST = {
    "BEATKEEPER_LEASE_SECONDS": "2",
    "BEATKEEPER_LEASE_RENEW_SECONDS": "0.5",
    "BEATKEEPER_SWEEP_SECONDS": "0.2",
    "BEATKEEPER_LIVENESS_SECONDS": "0.5",
    "BEATKEEPER_WORKER_CONCURRENCY": "3",
    "BEATKEEPER_ALLOWED_TASKS": "bk_test.*,beatkeeper.*",
    "BEATKEEPER_TASK_MODULES": "worker_tasks",
    "BEATKEEPER_WORKER_LOGLEVEL": "INFO",
}


def new_queue() -> str:
    return queue_name(f"t-{uuid.uuid4().hex[:8]}", "pool")


@dataclass
class Workers:
    """Starts worker processes for a queue; the owner stops them all."""

    supervisor: Supervisor
    redis_url: str
    tmp: Path
    queue: str = field(default_factory=new_queue)

    def start(self, name: str = "w", **env: str) -> Component:
        unique = f"{name}-{uuid.uuid4().hex[:6]}"
        liveness = self.tmp / f"{unique}.alive"
        full_env = {
            **os.environ,
            **FAST,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "BEATKEEPER_BROKER_URL": self.redis_url,
            "BEATKEEPER_WORKER_QUEUE": self.queue,
            "BEATKEEPER_LIVENESS_FILE": str(liveness),
            **env,
        }
        component = self.supervisor.start(
            unique,
            [sys.executable, "-m", "beatkeeper_worker", f"--hostname={unique}@%h"],
            env=full_env,
        )
        wait_until(component, liveness.exists, timeout=60)
        return component

    def kill(self, component: Component) -> None:
        """SIGKILL the whole worker: main process and pool children."""
        os.killpg(component.pid, signal.SIGKILL)
        component.popen.wait()
        self.supervisor.components.remove(component)


class Runs:
    """Publishes runs to one queue and reads their records and counters back."""

    def __init__(self, app: Any, client: redis.Redis, queue: str) -> None:
        self.app = app
        self.client = client
        self.queue = queue
        self.prefix = uuid.uuid4().hex[:8]

    def envelope(
        self,
        task: str = "bk_test.work",
        *,
        name: str | None = None,
        slot: dt.datetime | None = None,
        kwargs: dict[str, Any] | None = None,
        **policy: Any,
    ) -> RunEnvelope:
        retry = policy.pop("retry", RetryPolicy(max_retries=0))
        return RunEnvelope.for_slot(
            "t",
            name or f"obj-{uuid.uuid4().hex[:8]}",
            slot or dt.datetime.now(dt.UTC),
            TaskCall(name=task, kwargs=kwargs or {}),
            RunPolicy(retry=retry, **policy),
        )

    def key(self, label: str) -> str:
        return f"bk-test:{self.prefix}:{label}"

    def publish(self, envelope: RunEnvelope) -> bool:
        return publish_run(
            self.app, envelope, self.queue, registry=runtime_for(self.app).registry()
        )

    def send(self, envelope: RunEnvelope) -> None:
        send_run(self.app, envelope, self.queue)

    def all_records(self) -> list[RunRecord]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrange(
            keys.RUN_RECORDS_STREAM
        )  # type: ignore[assignment]
        return stream_records(entries)

    def records(self, run_id: str) -> list[RunRecord]:
        return [record for record in self.all_records() if record.run_id == run_id]

    def wait_for(self, run_id: str, state: RunState, timeout: float = 30) -> list[RunRecord]:
        """Poll until a record with `state` exists; return all records of the run."""
        self.wait_until(
            lambda: any(r.state is state for r in self.records(run_id)),
            timeout,
            f"{run_id} never reached {state}",
        )
        return self.records(run_id)

    def wait_until(self, ready: Callable[[], bool], timeout: float, why: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)
        raise AssertionError(f"{why} within {timeout} s; records: {self.dump()}")

    def count(self, key: str) -> int:
        return int(self.client.get(key) or 0)

    def idle(self) -> bool:
        """Nothing waits in the queue and nothing is delivered but unacked."""
        return self.client.llen(self.queue) == 0 and self.client.hlen("unacked") == 0

    def dropped(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(keys.stats_key(self.queue))  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    def dump(self) -> list[str]:
        return [
            f"{r.run_id} {r.state} #{r.attempt} {r.reason} {r.message}"
            for r in self.all_records()
            if r.run_id.startswith("t/")
        ][-30:]


def make_runs(redis_url: str, queue: str) -> Iterator[Runs]:
    app = create_app(WorkerSettings(broker_url=redis_url, queue=queue))
    client = redis.Redis.from_url(redis_url)
    try:
        yield Runs(app, client, queue)
    finally:
        client.close()
        app.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """A /metrics endpoint on 127.0.0.1, parsed by prometheus-client's own parser:
    (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
