"""`beatkeeper dev up` starts a usable control plane (and Redis) and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from beatkeeper.devenv.kube import kubectl
from beatkeeper.devenv.processes import process_alive


def _read_until_running(proc: subprocess.Popen[str], timeout: float) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        lines.append(line.rstrip())
        if "running; press Ctrl-C to stop" in line:
            return lines
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail("dev up never reported running:\n" + "\n".join(lines))


@pytest.mark.parametrize(
    ("only", "stop_signal"),
    [("infra", signal.SIGTERM), ("cluster", signal.SIGINT)],
    ids=["infra-sigterm", "cluster-ctrl-c"],
)
def test_dev_up_starts_and_stops_cleanly(
    tmp_path: Path, only: str, stop_signal: signal.Signals
) -> None:
    config = tmp_path / "kubeconfig"
    env = dict(os.environ, BEATKEEPER_STATE_DIR=str(tmp_path / "state"))
    env.pop("BEATKEEPER_KUBECONFIG", None)
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "beatkeeper.cli",
            "dev",
            "up",
            "--only",
            only,
            "--kubeconfig",
            str(config),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        _check_dev_up(proc, config, only, stop_signal)


def _check_dev_up(
    proc: subprocess.Popen[str], config: Path, only: str, stop_signal: signal.Signals
) -> None:
    lines = _read_until_running(proc, timeout=600)
    text = "\n".join(lines)
    pids = [int(p) for p in re.findall(r"=(\d+)", text.split("processes:")[1].splitlines()[0])]
    assert len(pids) == (4 if only == "infra" else 3)

    assert "No resources found" in kubectl(config, "get", "pods", "-A").stderr
    urls = re.findall(r"redis: (redis://\S+)", text)
    assert bool(urls) == (only == "infra")
    for url in urls:
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()

    proc.send_signal(stop_signal)
    assert proc.wait(timeout=60) == 0
    assert [pid for pid in pids if process_alive(pid)] == []
    assert not config.exists()
