"""`beatkeeper-worker`: run `celery worker` for the configured queue and pool.

Everything comes from `WorkerSettings` (environment variables); arguments
given here are passed on to `celery worker` after Beatkeeper's own, so they
can add to or override them (for example `-n name@%h`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from beatkeeper_worker.settings import WorkerSettings


def worker_argv(settings: WorkerSettings, extra: Sequence[str] = ()) -> list[str]:
    return [
        "worker",
        f"--queues={settings.queue}",
        f"--concurrency={settings.concurrency}",
        f"--pool={settings.pool}",
        f"--loglevel={settings.log_level}",
        # Mingle and gossip only make workers talk to each other; nothing here uses it.
        "--without-mingle",
        "--without-gossip",
        *extra,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker in the foreground; SIGTERM is a warm shutdown (running tasks finish)."""
    settings = WorkerSettings.from_env(os.environ)
    if not settings.queue:
        print("beatkeeper-worker: set BEATKEEPER_WORKER_QUEUE to the pool's queue", file=sys.stderr)
        return 2
    if settings.metrics_port:
        from beatkeeper_worker import metrics

        # Before anything imports prometheus_client: prefork children count into files.
        metrics.enable(settings.metrics_dir if settings.pool == "prefork" else None)
        metrics.serve(settings.metrics_port, settings.metrics_listen)
    from beatkeeper_worker.app import create_app

    app = create_app(settings)
    app.worker_main(worker_argv(settings, sys.argv[1:] if argv is None else argv))
    return 0
