"""The service the http-check example watches: `python -m beatkeeper_examples.health`.

A stand-in for a team's own service: 200 with a small JSON body on /health,
404 elsewhere, one log line per request (so `kubectl logs` counts the checks).
It runs from the examples' image (examples/health-endpoint.yaml).
"""

from __future__ import annotations

import argparse
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path.split("?", 1)[0] == "/health"
        body = b'{"status": "ok"}' if ok else b'{"error": "not found"}'
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m beatkeeper_examples.health")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)  # PID 1 in its pod: exit at once on SIGTERM
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Health)  # noqa: S104 - a pod
    print(f"serving /health on port {args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
