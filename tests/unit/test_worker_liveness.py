"""The liveness probe reads a file's age, so it needs neither Celery nor the broker."""

from __future__ import annotations

import os
import time
from pathlib import Path

from beatkeeper_worker.liveness import is_alive, main, mark_draining, touch


def test_fresh_stale_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    assert not is_alive(path, 30)
    touch(path)
    assert is_alive(path, 30)
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert not is_alive(path, 30)


def test_draining_counts_as_alive_however_old(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    mark_draining(path)
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert is_alive(path, 30)


def test_probe_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    assert main(["--max-age", "30", "--file", str(path)]) == 1
    touch(path)
    assert main(["--max-age", "30", "--file", str(path)]) == 0
