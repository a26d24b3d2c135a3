"""Beatkeeper's worker: executes scheduled runs with their policy and reports each state.

Public surface:
- `main(argv)`: run a worker for the configured queue (`beatkeeper-worker`).
- `create_app(settings)`: the Celery app, with `beatkeeper.run` and the built-ins.
- `current_run()`: the envelope of the run executing in this thread, for task code.
- `PermanentError`: raise it from a task to fail the run without retries.

The worker owns executing runs: the entry task (`execution`), leases and their
keeper (`leases`), retries (`retries`), the sweeper of dead workers' runs and due
retries (`sweeper`), the built-in tasks (`builtins`, `egress`), the task names it
announces (`registered`), its Celery task events (`taskevents`), liveness, metrics
and settings. The run registry, the records and publishing are the core's
(`beatkeeper_core.runs`, `.records`, `.publish`): beat and the operator use them too.

Exports load lazily, so `python -m beatkeeper_worker.liveness` (a probe run
every few seconds) does not import Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from beatkeeper_worker.app import create_app
    from beatkeeper_worker.errors import PermanentError
    from beatkeeper_worker.execution import current_run
    from beatkeeper_worker.main import main

__all__ = ["PermanentError", "create_app", "current_run", "main"]

_HOMES = {
    "PermanentError": "beatkeeper_worker.errors",
    "create_app": "beatkeeper_worker.app",
    "current_run": "beatkeeper_worker.execution",
    "main": "beatkeeper_worker.main",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'beatkeeper_worker' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
