"""A WorkerPool's author must hold the rights its Deployment uses (no confused deputy):
the SubjectAccessReviews the webhook makes, their cache, their refusals, and what
happens when the apiserver cannot answer. The apiserver here is a fake; the real
one, with real users, is tests/e2e/test_access_review.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import kubernetes
import pytest
from kubernetes.client import ApiClient, Configuration

from beatkeeper.operator.access import (
    CREATE_DEPLOYMENTS,
    CREATE_PODS,
    AccessChecker,
    Need,
    Requester,
    ReviewFailed,
    apiserver_review,
    pool_needs,
)
from beatkeeper.operator.webhook import Known, respond

ALICE = {
    "username": "alice",
    "uid": "u-1",
    "groups": ["team-a", "system:authenticated"],
    "extra": {"scopes": ["view", "edit"]},
}
POOL = {"image": "w:1", "replicas": 1}
WITH_ACCOUNT = {"image": "w:1", "template": {"serviceAccountName": "builder"}}


class FakeApiserver:
    """Answers SubjectAccessReviews from a set of (user, verb, group, resource) grants."""

    def __init__(self, *grants: tuple[str, str, str, str]) -> None:
        self.grants = set(grants)
        self.bodies: list[Mapping[str, Any]] = []
        self.failure: Exception | None = None

    def __call__(self, body: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
        assert timeout > 0
        self.bodies.append(body)
        if self.failure is not None:
            raise self.failure
        spec, attributes = body["spec"], body["spec"]["resourceAttributes"]
        wanted = (spec["user"], attributes["verb"], attributes["group"], attributes["resource"])
        return {"allowed": wanted in self.grants}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def checker(apiserver: FakeApiserver, clock: Clock | None = None, **options: Any) -> AccessChecker:
    return AccessChecker(apiserver, clock=clock or Clock(), **options)


def pool_review(
    access: AccessChecker,
    spec: Mapping[str, Any] | None = None,
    user: Mapping[str, Any] | None = None,
    **request: Any,
) -> dict[str, Any]:
    body = {
        "request": {
            "uid": "r1",
            "namespace": "team-a",
            "name": "p",
            "operation": "CREATE",
            "object": {"spec": dict(spec or POOL)},
            "userInfo": dict(user or ALICE),
            **request,
        }
    }
    known = Known(pools=lambda: {("team-a", "p"): POOL}, access=access)
    return dict(respond("/workerpool", body, known)["response"])


def test_the_review_is_built_from_user_info_exactly() -> None:
    apiserver = FakeApiserver(("alice", "create", "apps", "deployments"))
    assert pool_review(checker(apiserver))["allowed"] is True
    assert apiserver.bodies == [
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": "alice",
                "groups": ["team-a", "system:authenticated"],
                "uid": "u-1",
                "extra": {"scopes": ["view", "edit"]},
                "resourceAttributes": {
                    "namespace": "team-a",
                    "verb": "create",
                    "group": "apps",
                    "resource": "deployments",
                },
            },
        }
    ]


def test_a_user_who_may_not_create_deployments_is_refused_with_what_is_missing() -> None:
    answer = pool_review(checker(FakeApiserver()))
    assert answer["allowed"] is False
    assert answer["status"] == {
        "code": 403,
        "reason": "Forbidden",
        "message": 'user "alice" may not create deployments.apps in namespace "team-a": a '
        "WorkerPool creates a Deployment with the operator's rights, so its author needs "
        "that right too",
    }


def test_a_service_account_needs_the_right_to_create_pods() -> None:
    apiserver = FakeApiserver(("alice", "create", "apps", "deployments"))
    answer = pool_review(checker(apiserver), WITH_ACCOUNT)
    assert answer["allowed"] is False
    assert answer["status"]["message"] == (
        'user "alice" may not create pods in namespace "team-a": '
        'spec.template.serviceAccountName "builder" runs the pool\'s pods as that '
        "ServiceAccount, which only a user who may create pods in the namespace may do"
    )
    apiserver.grants.add(("alice", "create", "", "pods"))
    assert pool_review(checker(apiserver), WITH_ACCOUNT)["allowed"] is True
    assert pool_review(checker(FakeApiserver()), WITH_ACCOUNT)["status"]["message"].startswith(
        'user "alice" may not create deployments.apps'
    )


def test_what_a_pool_needs() -> None:
    assert [need.permission for need in pool_needs(POOL)] == [CREATE_DEPLOYMENTS]
    assert [need.permission for need in pool_needs(WITH_ACCOUNT)] == [
        CREATE_DEPLOYMENTS,
        CREATE_PODS,
    ]
    empty = {"image": "w:1", "template": {"serviceAccountName": ""}}
    assert [need.permission for need in pool_needs(empty)] == [CREATE_DEPLOYMENTS]
    assert (str(CREATE_DEPLOYMENTS), str(CREATE_PODS)) == ("deployments.apps", "pods")


def test_metadata_only_updates_and_kubectl_scale_are_not_checked() -> None:
    apiserver = FakeApiserver()  # grants nothing: any review would refuse
    access = checker(apiserver)
    old = {"metadata": {"labels": {}}, "spec": POOL}
    labelled = {"metadata": {"labels": {"team": "a"}}, "spec": POOL}
    metadata_only = pool_review(access, operation="UPDATE", object=labelled, oldObject=old)
    assert metadata_only["allowed"] is True
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 5}}
    scaled = pool_review(access, operation="UPDATE", subResource="scale", object=scale)
    assert scaled["allowed"] is True
    assert apiserver.bodies == []
    changed = pool_review(
        access, operation="UPDATE", object={"spec": {**POOL, "image": "w:2"}}, oldObject=old
    )
    assert changed["allowed"] is False
    assert len(apiserver.bodies) == 1


def test_an_invalid_spec_is_refused_for_its_field_before_any_review() -> None:
    apiserver = FakeApiserver()
    answer = pool_review(checker(apiserver), {"image": "w:1", "concurrency": 0})
    assert answer["status"]["code"] == 422
    assert answer["status"]["message"].startswith("spec.concurrency")
    assert apiserver.bodies == []


def test_without_a_checker_the_review_stays_a_pure_function() -> None:
    body = {"request": {"uid": "r", "namespace": "n", "operation": "CREATE", "object": {}}}
    body["request"]["object"] = {"spec": POOL}
    assert respond("/workerpool", body, Known(pools=dict))["response"]["allowed"] is True


def test_a_request_without_a_user_is_refused() -> None:
    access = checker(FakeApiserver(("alice", "create", "apps", "deployments")))
    for info in (None, {}, {"username": ""}, "alice"):
        refusal = access.refusal(info, "team-a", pool_needs(POOL))
        assert refusal is not None
        assert refusal.code == 403
        assert "names no user" in refusal.message


def test_allowed_answers_are_cached_for_ttl_denials_never() -> None:
    clock = Clock()
    apiserver = FakeApiserver(("alice", "create", "apps", "deployments"))
    access = checker(apiserver, clock, ttl=5)
    for _ in range(1000):
        assert access.refusal(ALICE, "team-a", pool_needs(POOL)) is None
    assert access.reviews == 1
    clock.now += 4.9
    assert access.refusal(ALICE, "team-a", pool_needs(POOL)) is None
    assert access.reviews == 1
    clock.now += 0.2  # expired: asked again
    assert access.refusal(ALICE, "team-a", pool_needs(POOL)) is None
    assert access.reviews == 2
    # Another namespace, other groups, another user: other keys.
    assert access.refusal(ALICE, "team-b", pool_needs(POOL)) is None
    assert access.refusal({**ALICE, "groups": ["team-a"]}, "team-a", pool_needs(POOL)) is None
    assert access.refusal({**ALICE, "username": "mallory"}, "team-a", pool_needs(POOL))
    assert access.reviews == 5
    # A denial is asked again every time: a right granted since is seen at once.
    assert access.refusal({**ALICE, "username": "mallory"}, "team-a", pool_needs(POOL))
    assert access.reviews == 6
    apiserver.grants.add(("mallory", "create", "apps", "deployments"))
    assert access.refusal({**ALICE, "username": "mallory"}, "team-a", pool_needs(POOL)) is None


def test_a_failed_review_refuses_the_pool_and_says_why() -> None:
    apiserver = FakeApiserver(("alice", "create", "apps", "deployments"))
    apiserver.failure = ReviewFailed("MaxRetryError: connection refused")
    refusal = checker(apiserver).refusal(ALICE, "team-a", pool_needs(POOL))
    assert refusal is not None
    assert refusal.status() == {
        "code": 503,
        "reason": "ServiceUnavailable",
        "message": 'whether user "alice" may create deployments.apps in namespace "team-a" '
        "could not be checked (SubjectAccessReview: MaxRetryError: connection refused); "
        "WorkerPools are refused until it can be, try again",
    }


def test_the_budget_bounds_every_review_of_one_request() -> None:
    def timed(took: float) -> tuple[AccessChecker, list[float]]:
        clock, timeouts = Clock(), []

        def slow(body: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
            timeouts.append(timeout)
            clock.now += took
            return {"allowed": True}

        return AccessChecker(slow, clock=clock, budget=4), timeouts

    access, timeouts = timed(3.5)  # the second review gets what the first left
    assert access.refusal(ALICE, "team-a", pool_needs(WITH_ACCOUNT)) is None
    assert timeouts == [4, 0.5]
    access, timeouts = timed(4.5)  # nothing is left for the second
    refusal = access.refusal(ALICE, "team-a", pool_needs(WITH_ACCOUNT))
    assert timeouts == [4]
    assert refusal is not None
    assert refusal.code == 503
    assert "(SubjectAccessReview: no time left within 4 s)" in refusal.message


# The real client against a fake apiserver over HTTP: the credentials, the body, errors.


class _Handler(BaseHTTPRequestHandler):
    answers: ClassVar[list[tuple[int, dict[str, Any]]]] = []
    seen: ClassVar[list[tuple[str, dict[str, str], Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.seen.append((self.path, headers, json.loads(self.rfile.read(length))))
        code, answer = self.answers.pop(0)
        body = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _client(host: str, tmp_path: Path) -> ApiClient:
    """Loaded from a kubeconfig, as `kubeapi.api_client` loads the operator's."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": host}}],
                "users": [{"name": "operator", "user": {"token": "operator-token"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
                "current-context": "c",
            }
        )
    )
    configuration = Configuration()
    kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    client = ApiClient(configuration)
    client.user_agent = "beatkeeper/test"
    return client


@pytest.fixture
def fake_apiserver() -> Iterator[str]:
    _Handler.answers, _Handler.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_reviews_go_out_with_the_operators_credentials(fake_apiserver: str, tmp_path: Path) -> None:
    _Handler.answers = [(201, {"status": {"allowed": True}}), (201, {"status": {"allowed": False}})]
    access = AccessChecker.for_client(_client(fake_apiserver, tmp_path))
    assert access.refusal(ALICE, "team-a", pool_needs(WITH_ACCOUNT)) is not None
    access.close()
    (path, headers, body), (_, _, pods) = _Handler.seen
    assert path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    assert headers["authorization"] == "Bearer operator-token"
    assert headers["user-agent"] == "beatkeeper/test"
    assert body["spec"]["user"] == "alice"
    assert body["spec"]["resourceAttributes"]["resource"] == "deployments"
    assert pods["spec"]["resourceAttributes"] == {
        "namespace": "team-a",
        "verb": "create",
        "group": "",
        "resource": "pods",
    }


def test_an_operator_without_the_right_to_review_is_told_what_rbac_lacks(
    fake_apiserver: str, tmp_path: Path
) -> None:
    forbidden = {"kind": "Status", "message": "subjectaccessreviews is forbidden", "code": 403}
    _Handler.answers = [(403, forbidden)]
    review, _close = apiserver_review(_client(fake_apiserver, tmp_path))
    with pytest.raises(ReviewFailed) as failed:
        review({"spec": {}}, 2.0)
    assert str(failed.value) == (
        "403 subjectaccessreviews is forbidden (the operator's RBAC needs create on "
        "subjectaccessreviews.authorization.k8s.io)"
    )


def test_an_unreachable_apiserver_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    review, _close = apiserver_review(_client(f"http://127.0.0.1:{port}", tmp_path))
    started = time.monotonic()
    with pytest.raises(ReviewFailed):
        review({"spec": {}}, 2.0)
    assert time.monotonic() - started < 1


def test_an_apiserver_that_never_answers_cannot_hold_the_webhook(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections (the kernel's backlog), never answers
        port = silent.getsockname()[1]
        access = AccessChecker.for_client(_client(f"http://127.0.0.1:{port}", tmp_path), budget=1.0)
        started = time.monotonic()
        refusal = access.refusal(ALICE, "team-a", [Need(CREATE_DEPLOYMENTS, "why")])
        elapsed = time.monotonic() - started
    assert refusal is not None
    assert refusal.code == 503
    assert "could not be checked" in refusal.message
    assert 0.9 < elapsed < 2.0


def test_requester_reads_user_info() -> None:
    assert Requester.from_user_info(ALICE) == Requester(
        "alice", "u-1", ("team-a", "system:authenticated"), (("scopes", ("view", "edit")),)
    )
    assert Requester.from_user_info({"username": "bob"}) == Requester("bob")
    assert Requester("bob").review_spec() == {"user": "bob", "groups": []}
