"""Start and stop the local servers, by PID, leaving nothing behind.

Each child runs in its own session (so a Ctrl-C in the terminal reaches only the
launcher, which then stops children in order) and with a parent-death signal (so
a launcher killed with SIGKILL still takes its children down). Output goes to a
log file per component that error messages point to.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class ComponentFailed(RuntimeError):
    """A component exited or never became ready; the message names its log."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Component:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    # Seconds it gets between SIGTERM and SIGKILL when its supervisor stops everything
    # (None: the supervisor's grace). The node's keeper needs longer: it cleans up.
    stop_grace: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def failure(self, why: str) -> ComponentFailed:
        return ComponentFailed(
            f"{self.name} {why}; log: {self.log_path}\n{log_tail(self.log_path)}"
        )

    def stop(self, grace: float) -> None:
        if not self.running():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Supervisor:
    """Owns the components it started and stops them in reverse start order."""

    log_dir: Path
    components: list[Component] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Component:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks
            )
        component = Component(name=name, popen=popen, log_path=log_path)
        self.components.append(component)
        return component

    def stop(self, component: Component, grace: float = 10.0) -> None:
        component.stop(grace)
        self.components.remove(component)

    def stop_all(self, grace: float = 10.0) -> None:
        while self.components:
            last = self.components[-1]
            self.stop(last, grace if last.stop_grace is None else last.stop_grace)

    def pids(self) -> list[int]:
        return [c.pid for c in self.components if c.running()]


def wait_until(
    component: Component,
    ready: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
) -> None:
    """Poll `ready` until it is true; fail early if the component exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not component.running():
            raise component.failure(f"exited with code {component.popen.returncode}")
        if ready():
            return
        time.sleep(interval)
    raise component.failure(f"was not ready within {timeout:.0f} s")


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie awaiting its reaper counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
