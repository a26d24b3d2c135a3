"""The Kubernetes API adapter: the only operator code that calls the apiserver directly.

Synchronous (the official client); callers in async code use asyncio.to_thread.
Status is written through the status subresource with JSON merge patches of the
fields the caller owns (a merge patch replaces lists whole).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, cast

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from beatkeeper.api.base import GROUP, VERSION


def api_client() -> ApiClient:
    """In-cluster credentials when in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return ApiClient()


class KubeApi:
    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.custom = CustomObjectsApi(client)
        self.core = CoreV1Api(client)

    def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> bool:
        """Merge `status` into the object's status; False if the object is gone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": dict(status)}
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(dict[str, Any], body)

    def post_event(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event on the object, as `kubectl describe` shows them."""
        meta = body.get("metadata", {})
        now = dt.datetime.now(dt.UTC)
        event = {
            "metadata": {
                "generateName": f"{meta.get('name', 'object')}.",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "beatkeeper"},
            "reportingComponent": "beatkeeper.dev/operator",
            "reportingInstance": "beatkeeper-operator",
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        self.core.create_namespaced_event(meta.get("namespace"), event)  # type: ignore[arg-type]
