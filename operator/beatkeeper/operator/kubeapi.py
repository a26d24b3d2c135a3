"""The Kubernetes API adapter: the only operator code that calls the apiserver directly.

Synchronous (the official client); callers in async code use asyncio.to_thread.
Status is written through the status subresource with JSON merge patches of the
fields the caller owns (a merge patch replaces lists whole).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from typing import Any, cast

import kubernetes
from kubernetes.client import (
    AdmissionregistrationV1Api,
    ApiClient,
    AppsV1Api,
    CoreV1Api,
    CustomObjectsApi,
)
from kubernetes.client.exceptions import ApiException

from beatkeeper import __version__
from beatkeeper.api.base import GROUP, VERSION
from beatkeeper_core import contract

FIELD_MANAGER = "beatkeeper"
# The apiserver names the field manager of a write after the User-Agent up to its
# "/" when the request does not name one, so every write of ours says "beatkeeper".
USER_AGENT = f"{FIELD_MANAGER}/{__version__}"


def api_client() -> ApiClient:
    """In-cluster credentials when in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32  # as many as kopf's handler threads
    client = ApiClient(configuration)
    client.user_agent = USER_AGENT
    return client


def namespace_terminating(error: ApiException) -> bool:
    """A create refused because the namespace is being deleted (403 NamespaceTerminating)."""
    return error.status == 403 and "NamespaceTerminating" in str(error.body or "")


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

    def add_finalizer(self, plural: str, namespace: str, name: str, finalizer: str) -> None:
        self._patch_finalizers(
            plural,
            namespace,
            name,
            lambda items: [*items, finalizer] if finalizer not in items else items,
        )

    def remove_finalizer(self, plural: str, namespace: str, name: str, finalizer: str) -> None:
        self._patch_finalizers(
            plural, namespace, name, lambda items: [f for f in items if f != finalizer]
        )

    def _patch_finalizers(
        self, plural: str, namespace: str, name: str, change: Callable[[list[str]], list[str]]
    ) -> None:
        """Read-modify-write with resourceVersion: a concurrent change makes it retry."""
        for _ in range(5):
            body = self.get(plural, namespace, name)
            if body is None:
                return
            meta = body["metadata"]
            current = list(meta.get("finalizers") or [])
            wanted = change(current)
            if wanted == current:
                return
            patch = {"metadata": {"finalizers": wanted, "resourceVersion": meta["resourceVersion"]}}
            try:
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, patch
                )
                return
            except ApiException as error:
                if error.status == 404:
                    return
                if error.status != 409:
                    raise

    def apply_webhook_configurations(
        self, validating: Mapping[str, Any], mutating: Mapping[str, Any]
    ) -> None:
        """Create or replace both configurations (local mode only: needs admissionregistration)."""
        api: Any = AdmissionregistrationV1Api(self.client)  # plain dicts in, not client models
        name = validating["metadata"]["name"]
        for body, read, create, replace in (
            (
                validating,
                api.read_validating_webhook_configuration,
                api.create_validating_webhook_configuration,
                api.replace_validating_webhook_configuration,
            ),
            (
                mutating,
                api.read_mutating_webhook_configuration,
                api.create_mutating_webhook_configuration,
                api.replace_mutating_webhook_configuration,
            ),
        ):
            try:
                current = read(name)
            except ApiException as error:
                if error.status != 404:
                    raise
                create(dict(body))
                continue
            replace(
                name,
                {
                    **body,
                    "metadata": {
                        **body["metadata"],
                        "resourceVersion": current.metadata.resource_version,
                    },
                },
            )

    def delete_webhook_configurations(self, name: str) -> None:
        api: Any = AdmissionregistrationV1Api(self.client)
        for delete in (
            api.delete_validating_webhook_configuration,
            api.delete_mutating_webhook_configuration,
        ):
            try:
                delete(name)
            except ApiException as error:
                if error.status != 404:
                    raise

    def post_event(
        self,
        body: Mapping[str, Any],
        kind: str,
        reason: str,
        message: str,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """A core/v1 Event on the object, as `kubectl describe` shows them.

        As client-go's recorder does, the same type, reason and message on the same
        object make one Event whose `count` grows: its name is derived from them,
        so a repeat finds it (409) and bumps count and lastTimestamp, and takes the
        new `annotations` (per-occurrence details such as the run id).

        Not kopf's `kopf.event`: kopf 1.45 posts a new Event per call (a generated
        name, no count, no annotations; its poster's docstring leaves aggregation to
        the client library), so a task failing every minute would add 1,440 Events a
        day where this keeps one. bench/event_posting.py measures both: 500 repeats
        store 500 Events (585 KB) through kopf, one (1.2 KB) here, at 3 requests per
        repeat instead of 1. tests/e2e/test_kubectl_conventions.py checks the one
        Event, its count and its annotations.
        """
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace"), meta.get("name", "object")
        now = contract.format_time(dt.datetime.now(dt.UTC))
        message = message[:1024]
        key = "\x00".join([str(meta.get("uid", name)), kind, reason, message])
        event_name = f"{name}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        event = {
            "metadata": {
                "name": event_name,
                "namespace": namespace,
                "annotations": dict(annotations or {}),
            },
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "name": name,
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": "beatkeeper"},
            "reportingComponent": "beatkeeper.dev/operator",
            "reportingInstance": "beatkeeper-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        for _ in range(3):
            try:
                self.core.create_namespaced_event(namespace, event)  # type: ignore[arg-type]
                return
            except ApiException as error:
                if error.status != 409:
                    raise
            try:
                existing = self.core.read_namespaced_event(event_name, namespace)
                patch = {
                    "metadata": {
                        "annotations": dict(annotations or {}),
                        "resourceVersion": existing.metadata.resource_version,
                    },
                    "count": (existing.count or 1) + 1,
                    "lastTimestamp": now,
                }
                self.core.patch_namespaced_event(event_name, namespace, patch)
                return
            except ApiException as error:
                if error.status not in (404, 409):  # expired meanwhile, or raced: again
                    raise

    # Worker Deployments (owned by WorkerPools). The operator never reads Secrets:
    # a pool's broker URL reaches its pods as a secretKeyRef.

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = AppsV1Api(self.client).read_namespaced_deployment(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self._plain(found)

    def create_deployment(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The created Deployment; None when one of that name exists (whoever owns it)."""
        try:
            created = AppsV1Api(self.client).create_namespaced_deployment(
                namespace,
                dict(body),  # type: ignore[arg-type]
                field_manager=FIELD_MANAGER,
            )
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        return self._plain(created)

    def apply_deployment(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply: fields the operator stops setting are removed, others kept."""
        applied = AppsV1Api(self.client).patch_namespaced_deployment(
            body["metadata"]["name"],
            namespace,
            dict(body),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        return self._plain(applied)

    def write_secret(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create the Secret, or replace it whole when one of that name exists.

        Create and update only: the operator writes the Redis credential it
        provisioned for a namespace (Redis tenancy) and never reads a Secret.
        """
        try:
            self.core.create_namespaced_secret(
                namespace,
                dict(body),  # type: ignore[arg-type]
                field_manager=FIELD_MANAGER,
            )
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.replace_namespaced_secret(
                body["metadata"]["name"],
                namespace,
                dict(body),  # type: ignore[arg-type]
                field_manager=FIELD_MANAGER,
            )

    def _plain(self, model: object) -> dict[str, Any]:
        """A client model as the JSON the apiserver sent (camelCase keys)."""
        return cast(dict[str, Any], self.client.sanitize_for_serialization(model))  # type: ignore[no-untyped-call]
