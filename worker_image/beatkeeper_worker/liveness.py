"""A liveness signal the chart can probe without calling the broker.

The worker's consumer touches a file from its event-loop timer every
`liveness_seconds`, so a wedged event loop stops the touches and the probe
fails. During a warm shutdown the loop no longer ticks while running tasks
finish, so the file then says `draining` and counts as alive (the pod's grace
period bounds that). The probe:

    python -m beatkeeper_worker.liveness --max-age 30

exits 0 when the file is fresh (or draining) and 1 otherwise. It imports
nothing heavy, so probing is cheap.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DRAINING = "draining"


def touch(path: Path) -> None:
    path.write_text(f"alive {time.time():.0f}\n")


def mark_draining(path: Path) -> None:
    path.write_text(f"{DRAINING}\n")


def is_alive(path: Path, max_age: float, now: float | None = None) -> bool:
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
        text = path.read_text()
    except OSError:
        return False
    return text.startswith(DRAINING) or age <= max_age


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beatkeeper_worker.liveness")
    parser.add_argument("--max-age", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--file", type=Path, help="default: BEATKEEPER_LIVENESS_FILE")
    args = parser.parse_args(argv)
    path = args.file
    if path is None:
        import os

        from beatkeeper_worker.settings import WorkerSettings

        path = WorkerSettings.from_env(os.environ).liveness_file
    alive = is_alive(path, args.max_age)
    if not alive:
        print(f"{path} is missing or older than {args.max_age:g} s", file=sys.stderr)
    return 0 if alive else 1


def liveness_step() -> Any:
    """The consumer bootstep class (built lazily: Celery is not imported by the probe)."""
    from celery import bootsteps

    from beatkeeper_worker.runtime import runtime_for

    class LivenessStep(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, consumer: Any, **kwargs: Any) -> None:
            super().__init__(consumer, **kwargs)
            self.timer_entry: Any = None
            self.path: Path | None = None

        def start(self, consumer: Any) -> None:
            settings = runtime_for(consumer.app).settings
            self.path = settings.liveness_file
            touch(self.path)
            self.timer_entry = consumer.timer.call_repeatedly(
                settings.liveness_seconds, touch, (self.path,)
            )

        def stop(self, consumer: Any) -> None:
            # Also called when the consumer restarts after a broker outage;
            # the stale file then tells the probe that this worker is stuck.
            if self.timer_entry is not None:
                self.timer_entry.cancel()
                self.timer_entry = None

        def shutdown(self, consumer: Any) -> None:
            self.stop(consumer)
            if self.path is not None:
                mark_draining(self.path)

    return LivenessStep


if __name__ == "__main__":
    raise SystemExit(main())
