"""The launcher stops exactly what it started, even when it is killed itself."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis

from beatkeeper_devenv.processes import Supervisor, process_alive
from beatkeeper_devenv.redis import start_redis


def wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_redis_starts_answers_and_stops(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    component, url = start_redis(supervisor, tmp_path / "data")
    client = redis.Redis.from_url(url)
    assert client.ping()
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    supervisor.stop_all()
    assert not component.running()
    assert supervisor.pids() == []
    client.close()


def test_stop_all_goes_in_reverse_order_and_escalates(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    first = supervisor.start("first", [sys.executable, "-c", "import time; time.sleep(60)"])
    second = supervisor.start("second", [sys.executable, "-c", stubborn])
    time.sleep(0.3)
    started = time.monotonic()
    supervisor.stop_all(grace=1.0)
    assert time.monotonic() - started < 10
    assert first.popen.returncode is not None
    assert second.popen.returncode == -9  # ignored SIGTERM, so it was killed


def test_children_die_with_a_killed_launcher(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from beatkeeper_devenv.processes import Supervisor\n"
            "from beatkeeper_devenv.redis import start_redis\n"
            f"where = Path({str(tmp_path)!r})\n"
            "component, _ = start_redis(Supervisor(where), where)\n"
            "print(component.pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    redis_pid = int(launcher.stdout.readline())
    assert process_alive(redis_pid)
    launcher.kill()
    launcher.wait()
    launcher.stdout.close()
    assert wait_dead(redis_pid), f"redis-server {redis_pid} outlived its SIGKILLed launcher"
