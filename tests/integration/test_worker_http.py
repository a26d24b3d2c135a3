"""`beatkeeper.http` from a real worker against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from worker_helpers import Runs, Workers

from beatkeeper_core.contract import RetryPolicy, RunState

pytestmark = pytest.mark.timeout(120)

R = RunState


@dataclass
class Seen:
    requests: list[dict[str, Any]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    seen: Seen

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.seen.requests.append(
            {"method": self.command, "path": self.path, "host": self.headers["Host"], "body": body}
        )
        status = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/status/") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    handler = type("Handler", (_Handler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="module")
def runs(module_workers: Workers, module_runs: Runs) -> Runs:
    # fe80::1 is link-local (refused by default). Without an interface scope the
    # kernel refuses to connect to it, so the override test sends no packet.
    module_workers.start("http", BEATKEEPER_ALLOWED_HOSTS="fe80::1")
    return module_runs


def http_run(runs: Runs, retry: RetryPolicy | None = None, **kwargs: Any) -> str:
    envelope = runs.envelope(
        "beatkeeper.http", kwargs=kwargs, retry=retry or RetryPolicy(max_retries=0)
    )
    runs.publish(envelope)
    return envelope.run_id


def test_matching_status_succeeds(runs: Runs, server: tuple[str, Seen]) -> None:
    address, seen = server
    plain = http_run(runs, url=f"http://{address}/status/200")
    posted = http_run(
        runs,
        method="POST",
        url=f"http://{address}/status/201",
        body={"hello": "world"},
        expected_status=[201],
    )
    runs.wait_for(plain, R.SUCCEEDED)
    runs.wait_for(posted, R.SUCCEEDED)
    post = next(r for r in seen.requests if r["path"] == "/status/201")
    assert post["method"] == "POST"
    assert json.loads(post["body"]) == {"hello": "world"}


def test_localhost_is_resolved_checked_and_keeps_its_host_header(
    runs: Runs, server: tuple[str, Seen]
) -> None:
    address, seen = server
    port = address.rsplit(":", 1)[1]
    run_id = http_run(runs, url=f"http://localhost:{port}/status/204")
    runs.wait_for(run_id, R.SUCCEEDED)
    request = next(r for r in seen.requests if r["path"] == "/status/204")
    assert request["host"] == f"localhost:{port}"


def test_mismatching_status_is_retried_then_fails(runs: Runs, server: tuple[str, Seen]) -> None:
    address, seen = server
    run_id = http_run(
        runs,
        retry=RetryPolicy(max_retries=1, initial_seconds=0.1),
        url=f"http://{address}/status/503",
    )
    records = runs.wait_for(run_id, R.FAILED)
    assert [r.state for r in records] == [R.PENDING, R.RUNNING, R.RETRYING, R.RUNNING, R.FAILED]
    assert "answered 503, expected 200-299" in records[2].message
    assert records[-1].reason == "RetriesExhausted"
    assert seen.paths().count("/status/503") == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://169.254.0.2:9/",  # link-local, not named in allowedHosts
        "http://[fe80::2]:9/",
    ],
)
def test_metadata_and_link_local_addresses_are_refused_without_retries(
    runs: Runs, url: str
) -> None:
    run_id = http_run(runs, retry=RetryPolicy(max_retries=3, initial_seconds=0.1), url=url)
    records = runs.wait_for(run_id, R.FAILED)
    assert [r.state for r in records] == [R.PENDING, R.RUNNING, R.FAILED]
    assert records[-1].reason == "HostRefused"
    assert "allowedHosts" in records[-1].message


def test_allowed_hosts_lets_a_link_local_address_through(runs: Runs) -> None:
    run_id = http_run(runs, url="http://[fe80::1]:9/", timeout=0.5)
    failed = runs.wait_for(run_id, R.FAILED)[-1]
    # Past the guard, to the connect call, which the kernel rejects (no scope id).
    assert failed.reason == "OSError"
    assert "Invalid argument" in failed.message
