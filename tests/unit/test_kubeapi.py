"""The Kubernetes adapter's error classification."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from beatkeeper.operator.kubeapi import namespace_terminating


def refusal(status: int, reason: str) -> ApiException:
    error = ApiException(status=status, reason="Forbidden")
    error.body = json.dumps(
        {"kind": "Status", "code": status, "details": {"causes": [{"reason": reason}]}}
    )
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (refusal(403, "NamespaceTerminating"), True),
        (refusal(403, "FieldValueForbidden"), False),
        (refusal(409, "NamespaceTerminating"), False),
        (ApiException(status=403, reason="Forbidden"), False),
    ],
    ids=["terminating", "other-403", "other-status", "no-body"],
)
def test_namespace_terminating(error: ApiException, expected: bool) -> None:
    assert namespace_terminating(error) is expected
