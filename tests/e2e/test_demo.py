"""`make demo` in its bounded mode, as a new user runs it, checked through the API.

The demo starts its own control plane, Redis, operator, beat and pod runner
(the session's cluster is not used), applies examples/ and shows the live view
for a bounded time. While it runs, this test reads the demo's cluster with
kubectl: the HTTP check succeeds with a moving Next time, the flaky task shows
its retries and then Succeeded on the third attempt, and the burst pool
scales up and back down. After the demo ends, no process it started is left.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import eventually

from beatkeeper_devenv.kube import kubectl

REPO = Path(__file__).resolve().parents[2]
DEMO_SECONDS = 120


@dataclass
class DemoRun:
    process: subprocess.Popen[str]
    marker: str
    lines: list[str] = field(default_factory=list)

    def follow(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kubeconfig(self) -> Path | None:
        """the demo printed its kubeconfig (the examples are applied)"""
        assert self.process.poll() is None, self.output[-4000:]
        for line in self.lines:
            found = re.search(r"kubeconfig: (\S+)", line)
            if found:
                return Path(found.group(1))
        return None


def marked_processes(marker: str) -> list[str]:
    """Processes whose environment carries the demo's marker (children inherit it)."""
    needle = f"DEMO_TEST_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
        except OSError:
            continue
    return found


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoRun]:
    marker = uuid.uuid4().hex
    env = dict(os.environ)
    env.pop("BEATKEEPER_KUBECONFIG", None)
    env.update(
        BEATKEEPER_STATE_DIR=str(tmp_path / "state"),
        DEMO_TEST_MARKER=marker,
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "beatkeeper.cli", "demo", "--seconds", str(DEMO_SECONDS)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = DemoRun(process, marker)
    reader = threading.Thread(target=run.follow, daemon=True)
    reader.start()
    try:
        yield run
    finally:
        if process.poll() is None:
            process.terminate()  # as Ctrl-C would: the demo tears down, then exits
            process.wait(120)
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()


def get(kubeconfig: Path, *args: str) -> Any:
    return json.loads(kubectl(kubeconfig, "get", *args, "-n", "demo", "-o", "json").stdout)


@pytest.mark.own_node
def test_bounded_demo_runs_the_examples_for_real_and_leaves_nothing(demo: DemoRun) -> None:
    kubeconfig = eventually(demo.kubeconfig, timeout=300, interval=0.5)

    def http_check_succeeded() -> str | None:
        """the HTTP check's last run Succeeded"""
        status = get(kubeconfig, "st", "http-check").get("status", {})
        last = status.get("lastRun") or {}
        return status.get("nextScheduleTime") if last.get("state") == "Succeeded" else None

    first_next = eventually(http_check_succeeded, timeout=60, interval=0.5)

    def next_moved() -> bool:
        """the HTTP check's Next time moved on after another successful run"""
        status = get(kubeconfig, "st", "http-check")["status"]
        return status["nextScheduleTime"] > first_next and status["succeeded"] >= 2

    eventually(next_moved, timeout=40, interval=0.5)

    def flaky_succeeded() -> dict[str, Any] | None:
        """the flaky task Succeeded after its retries"""
        status = get(kubeconfig, "st", "flaky").get("status", {})
        last = status.get("lastRun") or {}
        return status if last.get("state") == "Succeeded" else None

    flaky = eventually(flaky_succeeded, timeout=90, interval=0.5)
    assert flaky["lastRun"]["attempts"] == 3
    assert flaky["retries"] >= 2
    assert any(run["state"] == "Succeeded" for run in flaky["history"])

    def scaled(direction: str) -> list[str]:
        messages = [
            e["message"]
            for e in get(kubeconfig, "events")["items"]
            if e["reason"] == "Scaled" and e["involvedObject"]["name"] == "burst"
        ]
        if direction == "up":
            return [m for m in messages if m.startswith(("backlog", "prewarm"))]
        return [m for m in messages if m.startswith("scale down to 0")]

    ups = eventually(lambda: scaled("up"), timeout=60, interval=0.5)
    assert any(m.startswith("backlog") for m in ups), ups
    eventually(lambda: scaled("down"), timeout=90, interval=0.5)
    pool = get(kubeconfig, "wp", "burst")["status"]
    assert pool["lastScaleTime"]

    code = demo.process.wait(timeout=DEMO_SECONDS + 120)
    assert code == 0, demo.output[-4000:]
    assert "Beatkeeper demo: kubectl get st,wp -n demo" in demo.output
    summary = next(json.loads(line) for line in demo.lines if line.startswith('{"demo": "summary"'))
    assert summary["tasks"]["http-check"]["succeeded"] >= 2
    assert summary["tasks"]["flaky"]["retries"] >= 2
    assert summary["runs_by_state"]["succeeded"] >= 3
    assert any("scale down to 0" in message for message in summary["scale_events"])
    assert summary["endpoint_hits"] >= 2
    assert marked_processes(demo.marker) == []
    assert not kubeconfig.exists()
