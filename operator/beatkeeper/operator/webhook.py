"""The admission webhook server: validation for both kinds, the finalizer on create.

It runs in its own threads, beside kopf's event loop rather than on it: under a
burst of thousands of objects the loop is busy with watch events, and
`kubectl apply` must not wait behind them (with kopf's webhook server, 1,000
creates took five times longer). Reviews are the pure functions of
`beatkeeper.operator.admission`; this module only speaks AdmissionReview v1.

Paths: `/scheduledtask` and `/workerpool` (validating; the latter also sees
`kubectl scale`, the scale subresource; both warn about what is admitted but will not
work as written: fields a pool ignores, a narrowed allowedTasks under existing tasks,
a task no worker of the pool registers; `/workerpool` also refuses a pool whose
author may not create what it creates, see `review_worker_pool`), `/finalizer`
(mutating: adds Beatkeeper's finalizer to a new ScheduledTask, so no extra
write per object is needed later). In local mode the server also creates the
Validating/MutatingWebhookConfiguration `beatkeeper.dev` pointing at
https://127.0.0.1:PORT and deletes them on exit; in a cluster the chart ships
them pointing at the webhook Service. Failure policy is Ignore: while the
operator is down, objects are admitted and an invalid one is marked Stalled.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from beatkeeper.api.base import FINALIZER, GROUP, VERSION
from beatkeeper.operator import admission
from beatkeeper.operator.access import AccessChecker, pool_needs
from beatkeeper.operator.indexes import tasks_of_pool

logger = logging.getLogger(__name__)

NAME = GROUP  # the webhook configurations' name
Lookup = Callable[[], Mapping[tuple[str, str], Any]]


def _nothing() -> Mapping[tuple[str, str], Any]:
    return {}


@dataclass(frozen=True)
class Known:
    """What the operator's indexes hold, read at each review, keyed (namespace, name),
    and the access checker of WorkerPool authors (None: no access check, for reviews
    tested as pure functions; the operator always sets it)."""

    pools: Lookup  # WorkerPool specs
    tasks: Lookup = _nothing  # ScheduledTask bodies
    registered: Lookup = _nothing  # per WorkerPool: the task names its workers register
    access: AccessChecker | None = None


def _spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if obj is None else obj.get("spec")


def _where(request: Mapping[str, Any]) -> tuple[str, str]:
    meta = (request.get("object") or {}).get("metadata") or {}
    namespace = str(request.get("namespace") or meta.get("namespace", ""))
    return namespace, str(request.get("name") or meta.get("name", ""))


def review_scheduled_task(request: Mapping[str, Any], known: Known) -> dict[str, Any]:
    namespace, _ = _where(request)
    spec, pools = _spec(request.get("object")), known.pools()
    message = admission.review_scheduled_task(
        request.get("operation"), namespace, spec, _spec(request.get("oldObject")), pools
    )
    answer = _verdict(message)
    if message is None:
        warnings = admission.scheduled_task_warnings(namespace, spec, pools, known.registered())
        if warnings:
            answer["warnings"] = warnings
    return answer


def review_worker_pool(request: Mapping[str, Any], known: Known) -> dict[str, Any]:
    """Validation, then the author's rights (`beatkeeper.operator.access`), then warnings.

    The author's rights are checked on CREATE and on an UPDATE that changes the spec,
    whatever field changes: the operator then writes the Deployment. Not on an UPDATE
    that leaves the spec as it was (labels, annotations, finalizer removal, kopf's
    own writes), nor on `kubectl scale`: the scale subresource changes only the
    replica count of what the pool's author was allowed to create, and the right it
    needs, `update` on `workerpools/scale`, RBAC checks before this webhook is called.
    """
    namespace, name = _where(request)
    if request.get("subResource") == "scale":
        return _verdict(admission.review_pool_scale(namespace, name, known.pools()))
    operation = request.get("operation")
    spec, old_spec = _spec(request.get("object")), _spec(request.get("oldObject"))
    message = admission.review_worker_pool(operation, spec, old_spec)
    if message is not None:
        return _verdict(message)
    if known.access is not None and _changes_spec(operation, spec, old_spec):
        refusal = known.access.refusal(request.get("userInfo"), namespace, pool_needs(spec))
        if refusal is not None:
            return {"allowed": False, "status": refusal.status()}
    answer: dict[str, Any] = {"allowed": True}
    tasks = tasks_of_pool(known.tasks(), namespace, name) if old_spec is not None else []
    warnings = admission.worker_pool_warnings(spec, old_spec, name, tasks)
    if warnings:
        answer["warnings"] = warnings
    return answer


def _changes_spec(operation: object, spec: object, old_spec: object) -> bool:
    if operation == "CREATE":
        return True
    if operation != "UPDATE":
        return False
    if not isinstance(spec, Mapping) or not isinstance(old_spec, Mapping):
        return spec != old_spec
    return dict(spec) != dict(old_spec)


def add_finalizer(request: Mapping[str, Any], _known: Known) -> dict[str, Any]:
    meta = (request.get("object") or {}).get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER in finalizers:
        return {"allowed": True}
    operation = (
        {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
        if finalizers
        else {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
    )
    patch = base64.b64encode(json.dumps([operation]).encode()).decode()
    return {"allowed": True, "patchType": "JSONPatch", "patch": patch}


def _verdict(message: str | None) -> dict[str, Any]:
    if message is None:
        return {"allowed": True}
    return {"allowed": False, "status": {"code": 422, "reason": "Invalid", "message": message}}


REVIEWS: dict[str, Callable[[Mapping[str, Any], Known], dict[str, Any]]] = {
    "/scheduledtask": review_scheduled_task,
    "/workerpool": review_worker_pool,
    "/finalizer": add_finalizer,
}


def respond(path: str, review: Mapping[str, Any], known: Known) -> dict[str, Any]:
    """The AdmissionReview answer for one request body."""
    request = review.get("request") or {}
    handler = REVIEWS.get(path.split("?", maxsplit=1)[0])
    if handler is None:
        answer: dict[str, Any] = {"allowed": True}
    else:
        answer = handler(request, known)
    answer["uid"] = request.get("uid", "")
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer}


def _handler_class(known: Known) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the apiserver reuses connections
        # One buffered write per response: headers and body sent apart meet
        # Nagle's algorithm and delayed ACKs, 40 ms each (measured: 96 ms a create).
        wbufsize = 64 * 1024

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            try:
                review = json.loads(self.rfile.read(length))
                body = json.dumps(respond(self.path, review, known)).encode()
                status = 200
            except (ValueError, TypeError) as error:
                body, status = str(error).encode(), 400
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("webhook: " + format, *args)

    return Handler


@dataclass
class AdmissionServer:
    """HTTPS on `listen:port` in daemon threads; `port` 0 picks a free one."""

    listen: str
    port: int
    certfile: Path
    keyfile: Path
    known: Known

    def start(self) -> int:
        self.server = ThreadingHTTPServer((self.listen, self.port), _handler_class(self.known))
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.certfile), str(self.keyfile))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="webhook", daemon=True
        )
        self.thread.start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _rules(resources: list[str], operations: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "apiGroups": [GROUP],
            "apiVersions": [VERSION],
            "resources": resources,
            "operations": operations,
            "scope": "Namespaced",
        }
    ]


def _webhook(name: str, url: str, ca_bundle: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": f"{name}.{GROUP}",
        "clientConfig": {"url": url, "caBundle": ca_bundle},
        "rules": rules,
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
        "matchPolicy": "Equivalent",
    }


def build_configurations(base_url: str, ca_pem: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Validating and Mutating WebhookConfiguration for a URL-reachable server."""
    ca = base64.b64encode(ca_pem).decode()
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": NAME},
        "webhooks": [
            _webhook(
                "scheduledtask",
                f"{base_url}/scheduledtask",
                ca,
                _rules(["scheduledtasks"], ["CREATE", "UPDATE"]),
            ),
            _webhook(
                "workerpool",
                f"{base_url}/workerpool",
                ca,
                _rules(["workerpools", "workerpools/scale"], ["CREATE", "UPDATE"]),
            ),
        ],
    }
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NAME},
        "webhooks": [
            {
                **_webhook(
                    "finalizer", f"{base_url}/finalizer", ca, _rules(["scheduledtasks"], ["CREATE"])
                ),
                "reinvocationPolicy": "Never",
            }
        ],
    }
    return validating, mutating
