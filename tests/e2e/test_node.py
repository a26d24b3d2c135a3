"""The session's node as a pod sees it: DNS, the API with its own token, and no way out.

One probe pod of the worker image under Pod Security "restricted" resolves
Service names through cluster DNS, reaches the apiserver through the
`kubernetes` Service with its projected ServiceAccount token, and finds every
address beyond this machine unreachable and every name outside the cluster
unresolvable. A pod naming an image the node does not hold fails at once: its
pull goes to a closed loopback port, never to a registry.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import apply, eventually, get_json

from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.node import BRIDGE, BRIDGE_MAC

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
PROBE = """
import json, socket, ssl, urllib.error, urllib.request
found = {"kubernetes": socket.gethostbyname("kubernetes.default.svc.cluster.local")}
try:
    socket.gethostbyname("pypi.org")
    found["outside_name"] = "resolved"
except OSError as error:
    found["outside_name"] = type(error).__name__
sock = socket.socket()
sock.settimeout(3)
try:
    sock.connect(("151.101.0.223", 443))
    found["outside_address"] = "connected"
except OSError as error:
    found["outside_address"] = error.strerror
folder = "/var/run/secrets/kubernetes.io/serviceaccount/"
token = open(folder + "token").read()
context = ssl.create_default_context(cafile=folder + "ca.crt")
request = urllib.request.Request(
    "https://kubernetes.default.svc/api/v1/namespaces/default/pods",
    headers={"Authorization": "Bearer " + token},
)
try:
    urllib.request.urlopen(request, context=context)
    found["api"] = 200
except urllib.error.HTTPError as error:
    found["api"] = error.code
    found["api_user"] = json.loads(error.read())["message"].split('"')[1]
print(json.dumps(found))
"""


def pod(name: str, image: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }


@pytest.fixture
def restricted(kubeconfig: Path, namespace: str) -> str:
    kubectl(
        kubeconfig, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return namespace


def test_the_node_is_ready_and_runs_containerd(kubeconfig: Path) -> None:
    (node,) = get_json(kubeconfig, "nodes")["items"]
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert not node["spec"].get("taints")
    # The pods' gateway keeps its MAC whatever veths come and go (their ARP entries stay
    # right when another pod is deleted).
    assert Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip() == BRIDGE_MAC


def test_a_pod_resolves_services_reaches_the_api_and_nothing_beyond(
    kubeconfig: Path, restricted: str, worker_image: str
) -> None:
    apply(kubeconfig, restricted, pod("probe", worker_image, ["python", "-c", PROBE]))

    def finished() -> dict[str, Any] | None:
        """the probe pod ran to completion"""
        found = get_json(kubeconfig, "pod", "probe", "-n", restricted)
        return found if found["status"].get("phase") in ("Succeeded", "Failed") else None

    found = eventually(finished, timeout=60)
    logs = kubectl(kubeconfig, "logs", "probe", "-n", restricted).stdout
    assert found["status"]["phase"] == "Succeeded", logs
    result = json.loads(logs.strip().splitlines()[-1])
    kubernetes = get_json(kubeconfig, "service", "kubernetes", "-n", "default")
    assert result["kubernetes"] == kubernetes["spec"]["clusterIP"]
    # The token is real: the apiserver knows who asks (and RBAC says no).
    assert result["api"] == 403
    assert result["api_user"] == f"system:serviceaccount:{restricted}:default"
    assert result["outside_address"] == "Network is unreachable"
    assert result["outside_name"] == "gaierror"


def test_an_image_the_node_lacks_fails_at_once_without_leaving_the_machine(
    kubeconfig: Path, restricted: str
) -> None:
    started = time.monotonic()
    apply(kubeconfig, restricted, pod("absent", "example.org/beatkeeper/absent:1", ["true"]))

    def pull_failed() -> dict[str, Any] | None:
        """the kubelet reports the pull failed"""
        found = get_json(kubeconfig, "pod", "absent", "-n", restricted)
        statuses = found["status"].get("containerStatuses") or [{}]
        waiting = (statuses[0].get("state") or {}).get("waiting") or {}
        return waiting if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None

    waiting = eventually(pull_failed, timeout=30)
    assert time.monotonic() - started < 20
    assert "127.0.0.1:9" in waiting.get("message", "") or waiting["reason"] == "ImagePullBackOff"
