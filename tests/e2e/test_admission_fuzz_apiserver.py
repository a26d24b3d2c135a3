"""Admission under bad input, through the real apiserver and the operator's HTTPS webhook.

The unit tier (tests/unit/test_admission_fuzz.py) sends 500 generated reviews per kind
through the webhook's own function. Here a smaller, deterministic sample of the same
generated specs goes as server-side dry-run creates through the session's apiserver, so
the CRD schema, CEL rules and the webhook server answer together. For the test the
webhooks' failure policy is Fail: a webhook that errs, drops the connection or does not
answer within its 10 s would then show as the apiserver's own 500 ("failed calling
webhook"), where in production (`Ignore`) it would silently admit. Every answer must be a
created object or a refusal (422 Invalid, 400) that names a field under `spec`.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from beatkeeper_devenv.kube import kubectl


def _unit_fuzz() -> Any:
    """The unit tier's generators (tests/unit/test_admission_fuzz.py), loaded by path:
    this tier may run without the unit tier's folder on sys.path."""
    path = Path(__file__).resolve().parents[1] / "unit" / "test_admission_fuzz.py"
    spec = importlib.util.spec_from_file_location("admission_fuzz_generators", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _unit_fuzz()
WEBHOOKS = "beatkeeper.dev"
THROUGH_APISERVER = settings(
    max_examples=150,
    deadline=None,  # the bound that matters is the apiserver's call of the webhook (10 s)
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _failure_policy(kubeconfig: Path, policy: str) -> None:
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        found = json.loads(kubectl(kubeconfig, "get", kind, WEBHOOKS, "-o", "json").stdout)
        patch = [
            {"op": "replace", "path": f"/webhooks/{index}/failurePolicy", "value": policy}
            for index in range(len(found["webhooks"]))
        ]
        kubectl(kubeconfig, "patch", kind, WEBHOOKS, "--type=json", "-p", json.dumps(patch))


@pytest.fixture
def strict_webhooks(kubeconfig: Path, operator: Any) -> Iterator[None]:
    _failure_policy(kubeconfig, "Fail")
    try:
        yield
    finally:
        _failure_policy(kubeconfig, "Ignore")


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[CustomObjectsApi]:
    client = kubernetes.config.new_client_from_config(str(kubeconfig))
    yield CustomObjectsApi(client)
    client.close()


@pytest.fixture
def pools_known(kubeconfig: Path, api: CustomObjectsApi, namespace: str, operator: Any) -> str:
    """The namespace, with the fuzz's pools stored and known to the webhook."""
    for name, spec in FUZZ.POOLS.items():
        if name[0] != FUZZ.NAMESPACE:
            continue
        body = {"apiVersion": "beatkeeper.dev/v1alpha1", "kind": "WorkerPool"}
        body["metadata"] = {"name": name[1]}
        body["spec"] = spec
        try:
            api.create_namespaced_custom_object(
                "beatkeeper.dev", "v1alpha1", namespace, "workerpools", body
            )
        except ApiException:
            continue  # a pool the schema refuses (the fuzz's "broken" one): fine
    return namespace


def _answer(api: CustomObjectsApi, namespace: str, plural: str, kind: str, spec: Any) -> None:
    body = {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "fuzzed"},
        "spec": spec,
    }
    status, message = 201, ""
    try:
        api.create_namespaced_custom_object(
            "beatkeeper.dev",
            "v1alpha1",
            namespace,
            plural,
            body,
            dry_run="All",
            _request_timeout=30,
        )
    except ApiException as error:
        status, message = error.status, str(json.loads(error.body or "{}").get("message", ""))
    assert status in (201, 400, 422), (status, message, spec)
    assert "failed calling webhook" not in message, message
    assert status == 201 or "spec" in message, (message, spec)


@pytest.mark.usefixtures("strict_webhooks")
def test_the_apiserver_and_webhook_answer_every_scheduled_task(
    api: CustomObjectsApi, pools_known: str
) -> None:
    @THROUGH_APISERVER
    @given(spec=st.one_of(FUZZ.TASK_SPECS))
    def check(spec: Any) -> None:
        _answer(api, pools_known, "scheduledtasks", "ScheduledTask", spec)

    check()


@pytest.mark.usefixtures("strict_webhooks")
def test_the_apiserver_and_webhook_answer_every_worker_pool(
    api: CustomObjectsApi, pools_known: str
) -> None:
    @THROUGH_APISERVER
    @given(spec=st.one_of(FUZZ.POOL_SPECS))
    def check(spec: Any) -> None:
        _answer(api, pools_known, "workerpools", "WorkerPool", spec)

    check()
