"""Flower (from PyPI, started for real) against real workers: each attempt is listed under
the user's task name, with the run id in its task id, failed as failed and retried as
retried; the entry task (`beatkeeper.run`) never shows."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import Runs, Workers

from beatkeeper_core.contract import RetryPolicy, RunState
from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.processes import Supervisor, wait_until


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    supervisor = Supervisor(tmp_path / "flower-logs")
    env = {
        **os.environ,
        "BEATKEEPER_BROKER_URL": redis_url,
        "FLOWER_UNAUTHENTICATED_API": "true",  # Flower 2 serves /api only with this or auth
    }
    component = supervisor.start(
        "flower",
        [sys.executable, "-m", "celery", "-A", "beatkeeper_worker.celeryapp", "flower",
         f"--port={port}", "--address=127.0.0.1"],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(component, lambda: _answers(f"{url}/healthcheck"), timeout=60)
        yield url
    finally:
        supervisor.stop_all()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def flower_tasks(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/tasks", timeout=5) as answer:
        found: dict[str, Any] = json.loads(answer.read())
    return found


def test_flower_lists_each_attempt_under_the_users_task_name(
    flower: str, workers: Workers, runs: Runs
) -> None:
    workers.start()
    ok = runs.envelope(kwargs={"key": runs.key("ok")})
    flaky = runs.envelope(
        kwargs={"key": runs.key("flaky"), "fail_times": 9},
        retry=RetryPolicy(max_retries=1, initial_seconds=0.1, max_seconds=0.2),
    )
    unknown = runs.envelope("bk_test.nope")
    for envelope in (ok, flaky, unknown):
        runs.publish(envelope)
    runs.wait_for(ok.run_id, RunState.SUCCEEDED)
    runs.wait_for(flaky.run_id, RunState.FAILED)
    runs.wait_for(unknown.run_id, RunState.FAILED)
    expected = {
        f"{ok.run_id}#1": ("bk_test.work", "SUCCESS"),
        f"{flaky.run_id}#1": ("bk_test.work", "RETRY"),
        f"{flaky.run_id}#2": ("bk_test.work", "FAILURE"),
        f"{unknown.run_id}#1": ("bk_test.nope", "FAILURE"),
    }

    def listed() -> bool:
        found = flower_tasks(flower)
        return all(
            (found.get(uuid) or {}).get("name") == name
            and (found.get(uuid) or {}).get("state") == state
            for uuid, (name, state) in expected.items()
        )

    deadline = time.monotonic() + 20
    while not listed():
        assert time.monotonic() < deadline, json.dumps(flower_tasks(flower), indent=1)[:3000]
        time.sleep(0.2)
    found = flower_tasks(flower)
    assert "ValueError" in found[f"{flaky.run_id}#2"]["exception"]
    assert "TaskNotRegistered" in found[f"{unknown.run_id}#1"]["exception"]
    assert found[f"{ok.run_id}#1"]["kwargs"].startswith("{'key': ")
    assert found[f"{flaky.run_id}#2"]["retries"] == 1
    assert not [t for t in found.values() if t.get("name") == "beatkeeper.run"]
