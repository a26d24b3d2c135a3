"""The webhook's answers for pools: warnings kubectl prints, and kubectl scale refused
on an autoscaled pool (the scale subresource's AdmissionReview)."""

from __future__ import annotations

from typing import Any

from beatkeeper.operator.webhook import respond

POOLS = {
    ("team", "auto"): {"image": "w:1", "autoscaling": {"maxReplicas": 3}},
    ("team", "manual"): {"image": "w:1", "replicas": 1},
}


def review(request: dict[str, Any]) -> dict[str, Any]:
    body = {"request": {"uid": "u1", "namespace": "team", **request}}
    return dict(respond("/workerpool", body, lambda: POOLS)["response"])


def test_replicas_beside_autoscaling_is_admitted_with_a_warning() -> None:
    spec = {"image": "w:1", "replicas": 2, "autoscaling": {"maxReplicas": 3}}
    answer = review({"operation": "CREATE", "object": {"spec": spec}})
    assert answer["allowed"] is True
    assert answer["warnings"] == [
        "spec.replicas: ignored while spec.autoscaling is set; the autoscaler sets the "
        "replicas between spec.autoscaling.minReplicas and maxReplicas"
    ]
    plain = review({"operation": "CREATE", "object": {"spec": {"image": "w:1", "replicas": 2}}})
    assert plain == {"allowed": True, "uid": "u1"}


def test_kubectl_scale_is_refused_on_an_autoscaled_pool_only() -> None:
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 5}}
    refused = review(
        {"operation": "UPDATE", "subResource": "scale", "name": "auto", "object": scale}
    )
    assert refused["allowed"] is False
    assert refused["status"]["message"].startswith(
        "spec.replicas: WorkerPool team/auto is autoscaled (spec.autoscaling)"
    )
    allowed = review(
        {"operation": "UPDATE", "subResource": "scale", "name": "manual", "object": scale}
    )
    assert allowed["allowed"] is True
