"""The local control plane is a real Kubernetes: CRDs, controllers, namespace deletion."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from e2e_helpers import eventually, get_json

from beatkeeper_devenv.kube import CRD_NAMES, kubectl


def test_server_reports_the_built_version(kubeconfig: Path) -> None:
    version = json.loads(kubectl(kubeconfig, "version", "-o", "json").stdout)["serverVersion"]
    assert version["major"] == "1"
    assert version["minor"] in {"32", "33"}
    assert version["gitVersion"].startswith("v1.")


@pytest.mark.parametrize("crd", CRD_NAMES)
def test_crds_are_established(kubeconfig: Path, crds: Path, crd: str) -> None:
    conditions = get_json(kubeconfig, "crd", crd)["status"]["conditions"]
    by_type = {c["type"]: c["status"] for c in conditions}
    assert by_type["Established"] == "True"
    assert by_type["NamesAccepted"] == "True"


@pytest.mark.parametrize("resource", ["scheduledtasks", "workerpools", "st", "wp", "beatkeeper"])
def test_kubectl_get_answers(kubeconfig: Path, crds: Path, namespace: str, resource: str) -> None:
    result = kubectl(kubeconfig, "get", resource, "-n", namespace)
    assert result.returncode == 0
    assert "No resources found" in result.stderr


def test_deployment_gets_a_replicaset(kubeconfig: Path, namespace: str) -> None:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
            },
        },
    }
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(manifest))

    def replicaset_with_two_pods() -> bool:
        """the controller-manager made a ReplicaSet and its two Pods"""
        sets = get_json(kubeconfig, "replicasets", "-n", namespace)["items"]
        pods = get_json(kubeconfig, "pods", "-n", namespace)["items"]
        owned = [s for s in sets if s["metadata"]["ownerReferences"][0]["name"] == "web"]
        return len(owned) == 1 and len(pods) == 2

    eventually(replicaset_with_two_pods)


def test_namespace_deletion_completes(kubeconfig: Path, crds: Path) -> None:
    name = f"doomed-{time.monotonic_ns() % 10**8}"
    kubectl(kubeconfig, "create", "namespace", name)
    kubectl(kubeconfig, "create", "configmap", "settings", "-n", name, "--from-literal=a=b")
    kubectl(kubeconfig, "delete", "namespace", name, "--timeout=90s")

    def gone() -> bool:
        """the namespace is deleted"""
        return kubectl(kubeconfig, "get", "namespace", name, check=False).returncode != 0

    eventually(gone)
