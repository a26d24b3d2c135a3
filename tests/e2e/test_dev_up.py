"""`beatkeeper dev up` starts a usable control plane, Redis, a real node, and stops cleanly.

Stopping leaves nothing: no process, container, mount, network namespace,
interface, iptables rule, cgroup or changed sysctl of the node, also when the
launcher is SIGKILLed (the node's keeper gets its parent-death signal).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from beatkeeper_devenv import node
from beatkeeper_devenv.helm import ensure_helm
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.processes import process_alive
from beatkeeper_devenv.settings import DevSettings

CHART = Path(__file__).resolve().parents[2] / "charts" / "beatkeeper"


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


# With a real node. One node runs per machine, so these start their own (own_node) and run
# in a pytest session apart from the tests that use the session's node.

NODE_HOME = Path(os.environ.get("BEATKEEPER_CACHE_DIR", Path.home() / ".cache" / "beatkeeper"))


def machine_state() -> dict[str, object]:
    """What a node changes on the machine, to compare before it starts and after it stops."""

    def lines(*argv: str) -> list[str]:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()

    netns = Path("/run/netns")
    rules = [
        line
        for tool in ("iptables-save", "ip6tables-save")
        for line in lines(tool)
        if line.startswith(("-A", "-N", ":KUBE", ":CNI"))
    ]
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{node.CGROUP_ROOT}"))
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(NODE_HOME) in line or "/run/netns/" in line
    ]
    sysctls = {key: node._sysctl_path(key).read_text().strip() for key in node._SYSCTLS}
    return {
        "interfaces": sorted(line.split()[0] for line in lines("ip", "-br", "link")),
        "netns": sorted(p.name for p in netns.iterdir()) if netns.is_dir() else [],
        "iptables": rules,
        "cgroups": cgroups,
        "mounts": mounts,
        "sysctls": sysctls,
        "processes": node_processes(),
        "run folder": (node.node_home(NODE_HOME) / "run").exists(),
    }


def node_processes() -> list[str]:
    """Processes of a node: containerd, shims, kubelet and friends, container processes."""
    marks = (b"containerd", b"kubelet", b"kube-proxy", b"kube-scheduler", b"coredns", b"/pause")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
            cgroup = (entry / "cgroup").read_text()
        except OSError:
            continue
        if node.CGROUP_ROOT in cgroup or any(mark in argv for mark in marks):
            found.append(f"{entry.name}: {argv[:100]!r}")
    return found


def start_dev_up(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, BEATKEEPER_STATE_DIR=str(tmp_path / "state"))
    env.pop("BEATKEEPER_KUBECONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "beatkeeper.cli", "dev", "up", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def printed(lines: list[str], label: str) -> str:
    found = [line.split(f"{label}: ", 1)[1] for line in lines if f"] {label}: " in line]
    assert found, f"no '{label}:' line in:\n" + "\n".join(lines)
    return found[0].strip()


def wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while [pid for pid in pids if process_alive(pid)]:
        assert time.monotonic() < deadline, f"still running: {pids}"
        time.sleep(0.5)


@pytest.mark.own_node
def test_only_node_serves_helm_install_and_a_killed_launcher_leaves_nothing(
    tmp_path: Path,
) -> None:
    before = machine_state()
    config = tmp_path / "kubeconfig"
    with start_dev_up(tmp_path, "--only", "node", "--kubeconfig", str(config)) as proc:
        lines = _read_until_running(proc, timeout=900)
        pids = [int(p) for p in re.findall(r"=(\d+)", printed(lines, "processes"))]
        nodes = kubectl(config, "get", "nodes", "--no-headers").stdout.splitlines()
        assert len(nodes) == 1
        assert nodes[0].split()[1] == "Ready"
        assert "No resources found" in kubectl(config, "get", "pods", "-A").stderr

        # The quick start, as the README gives it: the default images and no other values.
        helm = ensure_helm(DevSettings.from_env(os.environ))
        install = subprocess.run(
            [str(helm), f"--kubeconfig={config}", "install", "bk", str(CHART), "-n", "bk-system",
             "--create-namespace", "--set", "redis.bundled.enabled=true", "--wait",
             "--timeout=5m"],
            capture_output=True, text=True, check=False,
            env=dict(os.environ, HELM_CONFIG_HOME=str(tmp_path / "helm"),
                     HELM_CACHE_HOME=str(tmp_path / "helm"), HELM_DATA_HOME=str(tmp_path / "helm")),
        )  # fmt: skip
        assert install.returncode == 0, install.stderr
        pods = json.loads(kubectl(config, "get", "pods", "-n", "bk-system", "-o", "json").stdout)
        ids = [c["containerID"] for p in pods["items"] for c in p["status"]["containerStatuses"]]
        assert len(ids) == 4  # operator, two beats, Redis
        assert all(i.startswith("containerd://") for i in ids), ids
        assert node_processes()

        proc.kill()  # SIGKILL: the keeper gets its parent-death signal and cleans up
        proc.wait(timeout=30)
        wait_gone(pids, timeout=120)
    assert machine_state() == before


@pytest.mark.own_node
def test_dev_up_runs_pools_on_the_node_with_its_redis_and_ctrl_c_leaves_nothing(
    tmp_path: Path,
) -> None:
    before = machine_state()
    config = tmp_path / "kubeconfig"
    with start_dev_up(tmp_path, "--kubeconfig", str(config)) as proc:
        lines = _read_until_running(proc, timeout=900)
        pids = [int(p) for p in re.findall(r"=(\d+)", printed(lines, "processes"))]
        url = printed(lines, "redis")
        client = redis.Redis.from_url(url)
        assert client.ping()  # from the host

        team = "team-a"
        kubectl(config, "create", "namespace", team)
        kubectl(config, "label", "namespace", team, "pod-security.kubernetes.io/enforce=restricted")
        kubectl(config, "create", "secret", "generic", "beatkeeper-redis", "-n", team,
                f"--from-literal=url={url}")  # fmt: skip
        manifests = [
            {"apiVersion": "beatkeeper.dev/v1alpha1", "kind": "WorkerPool",
             "metadata": {"name": "default"},
             "spec": {"image": "beatkeeper-worker:0.1.0", "allowedTasks": ["beatkeeper.*"],
                      "replicas": 1}},
            {"apiVersion": "beatkeeper.dev/v1alpha1", "kind": "ScheduledTask",
             "metadata": {"name": "tick"},
             "spec": {"every": "2s", "workerPool": "default",
                      "task": {"name": "beatkeeper.sleep", "args": [0.1]}}},
        ]  # fmt: skip
        for manifest in manifests:
            kubectl(config, "apply", "-n", team, "-f", "-", stdin=json.dumps(manifest))

        def succeeded() -> bool:
            """a run Succeeded in the pool's pod, which reached Redis by the printed URL"""
            found = json.loads(
                kubectl(config, "get", "st", "tick", "-n", team, "-o", "json").stdout
            )
            return (found.get("status", {}).get("lastRun") or {}).get("state") == "Succeeded"

        deadline = time.monotonic() + 120
        while not succeeded():
            assert time.monotonic() < deadline, kubectl(
                config, "get", "st,wp,pods", "-n", team
            ).stdout
            time.sleep(1)
        pods = json.loads(kubectl(config, "get", "pods", "-n", team, "-o", "json").stdout)["items"]
        assert pods[0]["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
        client.close()

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        wait_gone(pids, timeout=30)
    assert not config.exists()
    assert machine_state() == before
