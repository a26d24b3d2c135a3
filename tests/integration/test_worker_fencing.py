"""Fencing: a worker cut off from Redis stops the run before its lease can expire.

A real partition: worker A reaches Redis only through a TCP proxy that the
test cuts (every byte dropped, no reset), while worker B reaches Redis
directly. The task ticks into a file, outside the system under test, so each
execution's lifetime is known. After the cut A cannot renew the lease; it must
stop the run (or die trying) before the lease expires, and only then may B
recover and run it: the two executions never overlap.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from worker_helpers import Runs, Workers

from beatkeeper_core.contract import RunState
from beatkeeper_devenv.netproxy import Partition

pytestmark = pytest.mark.timeout(120)

# A 4 s lease renewed every 1 s: the fence stops the run 3 s after the last
# confirmed renewal and kills its process 0.5 s before the lease can expire.
TIMINGS = {
    "BEATKEEPER_LEASE_SECONDS": "4",
    "BEATKEEPER_LEASE_RENEW_SECONDS": "1",
    "BEATKEEPER_SWEEP_SECONDS": "0.2",
}


def executions(path: Path) -> dict[str, list[float]]:
    """Tick times per executing process."""
    found: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        process, at = line.split()
        found.setdefault(process, []).append(float(at))
    return found


@pytest.mark.parametrize("task", ["bk_test.ticks", "bk_test.stubborn_ticks"])
def test_a_partitioned_worker_stops_the_run_before_it_is_recovered_elsewhere(
    workers: Workers, runs: Runs, redis_url: str, tmp_path: Path, task: str
) -> None:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    proxy = Partition((host, int(port)))
    try:
        proxied = f"redis://127.0.0.1:{proxy.port}/0"
        workers.start("a", BEATKEEPER_BROKER_URL=proxied, BEATKEEPER_WORKER_CONCURRENCY="1",
                      **TIMINGS)  # fmt: skip
        path = tmp_path / "ticks.log"
        path.touch()
        envelope = runs.envelope(task, kwargs={"path": str(path), "seconds": 12})
        runs.publish(envelope)
        runs.wait_until(lambda: bool(path.read_text()), 30, "worker A never started the run")
        proxy.cut()
        cut_at = time.time()
        workers.start("b", **TIMINGS)

        runs.wait_until(lambda: len(executions(path)) == 2, 40, "worker B never recovered it")
        records = runs.wait_for(envelope.run_id, RunState.SUCCEEDED, timeout=30)
        assert [r.state for r in records].count(RunState.SUCCEEDED) == 1
        # Both executions are over (A's long since, or it would have ticked on): compare.
        first, second = sorted(executions(path).values(), key=min)
        assert max(first) < min(second), (
            f"A ticked until {max(first) - cut_at:.2f} s after the cut, "
            f"B started at {min(second) - cut_at:.2f} s"
        )
    finally:
        proxy.close()
