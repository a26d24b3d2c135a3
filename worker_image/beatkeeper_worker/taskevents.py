"""Celery task events under the user's task name, so Flower and celery-exporter see runs.

Every run travels as Beatkeeper's entry task (`beatkeeper.run`), whose envelope
carries the run policy. Celery would report that entry task, succeeding even
when the user's task failed; so the entry task sends no events of its own
(`send_events=False`) and the executor sends, for each attempt, the events
Celery sends for a task: task-received and task-started, then task-succeeded,
task-retried (the attempt failed and a retry is scheduled) or task-failed, with
the user's task name, its arguments, and as task id `<run id>#<attempt>`
(`RunEnvelope.celery_task_id`), so each attempt is one row in Flower and the run
id is in it. A refused run (task not allowed or not registered) is received and
failed; a run stopped because another worker took its lease is revoked.

Events are buffered and sent together every `FLUSH_SECONDS` by a thread of
the process, in one message (`task.multi`, as Celery's own worker batches task
events on Redis), so monitoring costs a publish per flush rather than three per
attempt; Flower and celery-exporter read such batches. Sending is best effort and
never touches the run: an event lost to a broker blip loses a row in Flower,
never a run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from kombu.utils.encoding import safe_repr

from beatkeeper_core.contract import RunEnvelope

log = logging.getLogger(__name__)
FLUSH_SECONDS = 0.2


class TaskEvents:
    """The events of one worker process (its own dispatcher and broker connection)."""

    def __init__(self, app: Any, hostname: str) -> None:
        self._app = app
        self._hostname = hostname
        self._dispatcher: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._app.conf.worker_send_task_events)

    def received(self, envelope: RunEnvelope) -> None:
        task = envelope.task
        self._send(
            "task-received",
            envelope,
            name=task.name,
            args=safe_repr(list(task.args)),  # type: ignore[no-untyped-call]
            kwargs=safe_repr(dict(task.kwargs)),  # type: ignore[no-untyped-call]
            root_id=envelope.celery_task_id,
            parent_id=None,
            retries=envelope.attempt - 1,
            eta=None,
            expires=None,
        )

    def started(self, envelope: RunEnvelope) -> None:
        self._send("task-started", envelope)  # the dispatcher adds the pid

    def succeeded(self, envelope: RunEnvelope, runtime: float) -> None:
        self._send("task-succeeded", envelope, result="None", runtime=runtime)

    def retried(self, envelope: RunEnvelope, exception: str) -> None:
        self._send("task-retried", envelope, exception=exception, traceback="")

    def failed(self, envelope: RunEnvelope, exception: str) -> None:
        self._send("task-failed", envelope, exception=exception, traceback="")

    def revoked(self, envelope: RunEnvelope) -> None:
        self._send("task-revoked", envelope, terminated=True, signum=None, expired=False)

    def _send(self, kind: str, envelope: RunEnvelope, **fields: Any) -> None:
        if not self.enabled:
            return
        try:
            with self._lock:
                self._dispatch().send(kind, uuid=envelope.celery_task_id, **fields)
        except Exception:  # a lost event must never fail the run
            log.debug("event %s of %s not buffered", kind, envelope.run_id, exc_info=True)

    def _dispatch(self) -> Any:
        """This process's dispatcher (a forked pool child makes its own), and its flusher."""
        if self._dispatcher is None or self._pid != os.getpid():
            connection = self._app.connection_for_write()
            self._dispatcher = self._app.events.Dispatcher(
                connection,
                hostname=self._hostname,
                enabled=True,
                buffer_group=["task"],
                buffer_limit=10_000,
            )
            self._pid = os.getpid()
            threading.Thread(target=self._flush_forever, name="task-events", daemon=True).start()
        return self._dispatcher

    def flush(self) -> None:
        with self._lock:
            dispatcher = self._dispatcher if self._pid == os.getpid() else None
            if dispatcher is None:
                return
            try:
                dispatcher.flush()
            except Exception:  # the broker is away: these events are lost, the next go
                log.debug("task events not sent", exc_info=True)
                dispatcher._group_buffer.clear()

    def _flush_forever(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            time.sleep(FLUSH_SECONDS)
            self.flush()
