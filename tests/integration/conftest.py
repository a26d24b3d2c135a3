"""Fixtures for the worker tier: real `celery worker` processes on per-test queues."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_helpers import Runs, Workers, make_runs

from beatkeeper_devenv.processes import Supervisor


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    supervisor = Supervisor(tmp_path / "logs")
    try:
        yield Workers(supervisor, redis_url, tmp_path)
    finally:
        supervisor.stop_all(grace=15)


@pytest.fixture
def runs(redis_url: str, workers: Workers) -> Iterator[Runs]:
    yield from make_runs(redis_url, workers.queue)


@pytest.fixture(scope="module")
def module_workers(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    tmp = tmp_path_factory.mktemp("workers")
    supervisor = Supervisor(tmp / "logs")
    try:
        yield Workers(supervisor, redis_url, tmp)
    finally:
        supervisor.stop_all(grace=15)


@pytest.fixture(scope="module")
def module_runs(redis_url: str, module_workers: Workers) -> Iterator[Runs]:
    yield from make_runs(redis_url, module_workers.queue)
