"""Built-in tasks every pool has without user code: `beatkeeper.http` and `beatkeeper.sleep`.

Both are ordinary Celery tasks run through `beatkeeper.run` envelopes, so the
pool's allowedTasks applies to them as to any other task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from beatkeeper_core.contract import BUILTIN_TASKS
from beatkeeper_core.records import redact
from beatkeeper_worker import egress
from beatkeeper_worker.errors import InvalidRequest, UnexpectedStatus
from beatkeeper_worker.execution import current_run

HTTP_TASK, SLEEP_TASK = BUILTIN_TASKS
_SLEEP_STEP = 0.05  # short naps, so an asynchronous interrupt lands promptly

JsonBody = str | dict[str, Any] | list[Any] | None


class SmokeTestFailure(Exception):
    """`beatkeeper.sleep` failing on purpose (its `fail_times`)."""


def http(
    allowed_hosts: Sequence[str],
    *,
    method: str = "GET",
    url: str = "",
    headers: dict[str, str] | None = None,
    body: JsonBody = None,
    timeout: float = 10.0,
    expected_status: Sequence[int] | None = None,
) -> dict[str, int]:
    """Call `url`; a status outside `expected_status` (default 2xx) raises, so it retries."""
    expected = set(expected_status) if expected_status else set(range(200, 300))
    sent_headers = dict(headers or {})
    target = egress.resolve_target(url, allowed_hosts)
    status = egress.request(
        target, method.upper(), sent_headers, _encode_body(body, sent_headers), timeout
    )
    if status not in expected:
        raise UnexpectedStatus(
            f"{method.upper()} {redact(url)} answered {status}, expected {_ranges(expected)}"
        )
    return {"status": status}


def _encode_body(body: JsonBody, headers: dict[str, str]) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, dict | list):
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(body).encode()
    raise InvalidRequest(f"body must be a string or JSON, not {type(body).__name__}")


def _ranges(codes: set[int]) -> str:
    ordered = sorted(codes)
    spans: list[str] = []
    start = prev = ordered[0]
    for code in [*ordered[1:], None]:
        if code is not None and code == prev + 1:
            prev = code
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if code is not None:
            start = prev = code
    return ", ".join(spans)


def sleep(seconds: float = 0.0, fail_times: int = 0) -> None:
    """Sleep, then fail on purpose while the run's attempt is at most `fail_times`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, _SLEEP_STEP))
    run = current_run()
    attempt = run.attempt if run is not None else 1
    if attempt <= fail_times:
        raise SmokeTestFailure(f"attempt {attempt} fails on purpose (fail_times={fail_times})")


def register_builtins(app: Any, allowed_hosts: Sequence[str]) -> None:
    hosts = tuple(allowed_hosts)

    @app.task(name=HTTP_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def http_task(  # noqa: PLR0917 - the task's public signature, positional allowed
        method: str = "GET",
        url: str = "",
        headers: dict[str, str] | None = None,
        body: JsonBody = None,
        timeout: float = 10.0,
        expected_status: Sequence[int] | None = None,
    ) -> dict[str, int]:
        return http(
            hosts,
            method=method,
            url=url,
            headers=headers,
            body=body,
            timeout=timeout,
            expected_status=expected_status,
        )

    app.task(name=SLEEP_TASK, ignore_result=True)(sleep)
