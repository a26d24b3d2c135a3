"""Run records as the worker, beat and the operator write them: one constructor per state.

The registry's scripts append the encoded records to the `beatkeeper:runs`
stream in the same round trip as the state change; this module only decides
what a record says. Messages are short and never carry credentials: anything
that looks like a URL's user-info, a bearer token or a `password=`-style value
is redacted before truncation.
"""

from __future__ import annotations

import datetime as dt
import re

from beatkeeper_core.contract import RunEnvelope, RunRecord, RunState

MESSAGE_CHARS = 500

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+@")
_SECRET_VALUE = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth)"
    r"([\"']?\s*[=:]\s*[\"']?)[^\s&\"',;]+"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """Hide credentials that commonly leak into exception messages."""
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _SECRET_VALUE.sub(r"\1\2***", text)
    return _BEARER.sub(r"\1 ***", text)


def short_message(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(exc: BaseException) -> str:
    """`ExceptionClass: text`, redacted and truncated."""
    detail = str(exc)
    return short_message(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


def pending(envelope: RunEnvelope, now: dt.datetime) -> RunRecord:
    return RunRecord.of(envelope, RunState.PENDING, now)


def running(envelope: RunEnvelope, now: dt.datetime, worker: str) -> RunRecord:
    return RunRecord.of(envelope, RunState.RUNNING, now, start_time=now, worker=worker)


def succeeded(
    envelope: RunEnvelope, started: dt.datetime, now: dt.datetime, worker: str
) -> RunRecord:
    return RunRecord.of(
        envelope,
        RunState.SUCCEEDED,
        now,
        start_time=started,
        completion_time=now,
        worker=worker,
    )


def retrying(
    envelope: RunEnvelope,
    *,
    started: dt.datetime,
    now: dt.datetime,
    next_attempt_at: dt.datetime,
    message: str,
    worker: str,
) -> RunRecord:
    return RunRecord.of(
        envelope,
        RunState.RETRYING,
        now,
        start_time=started,
        next_attempt_at=next_attempt_at,
        message=message,
        worker=worker,
    )


def failed(
    envelope: RunEnvelope,
    now: dt.datetime,
    reason: str,
    message: str,
    *,
    started: dt.datetime | None = None,
    worker: str = "",
) -> RunRecord:
    return RunRecord.of(
        envelope,
        RunState.FAILED,
        now,
        start_time=started,
        completion_time=now,
        reason=reason,
        message=short_message(message),
        worker=worker,
    )


def not_started(
    envelope: RunEnvelope, state: RunState, now: dt.datetime, reason: str, message: str
) -> RunRecord:
    """Skipped or Missed: finished without executing."""
    return RunRecord.of(
        envelope, state, now, completion_time=now, reason=reason, message=short_message(message)
    )
