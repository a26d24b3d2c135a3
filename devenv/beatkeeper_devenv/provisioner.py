"""The local node's volume provisioner: a folder per PersistentVolumeClaim.

The node's default StorageClass names this provisioner, as kind's and k3s's
name their local-path provisioners, so a chart's claims (the bundled Redis's
append-only file) bind with default values. For a claim of that class it
makes a folder under the node's run folder and a hostPath PersistentVolume
with a claimRef to the claim; the controller-manager's binder binds the two.
A released volume (its claim deleted) is deleted with its folder. Every
folder goes with the node's run folder when the node stops.

The folders are world-writable, as local-path's are: a hostPath volume gets
no fsGroup ownership, and the pod's user is not known in advance.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

PROVISIONER = "beatkeeper.dev/local-path"
_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
_POLL_SECONDS = 1.0

log = logging.getLogger("beatkeeper.provisioner")


def volume_name(claim_uid: str) -> str:
    return f"pvc-{claim_uid}"


def build_volume(claim: Mapping[str, Any], folder: Path, node: str) -> dict[str, Any]:
    """The PersistentVolume for `claim`, bound to it by claimRef, on `node` only."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(meta["uid"]),
            "annotations": {_PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.get("storageClassName"),
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": str(folder), "type": "Directory"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


class Provisioner:
    def __init__(self, client: ApiClient, volumes: Path, storage_class: str, node: str) -> None:
        self.core = CoreV1Api(client)
        self.client = client
        self.volumes = volumes
        self.storage_class = storage_class
        self.node = node

    def _plain(self, model: object) -> dict[str, Any]:
        return self.client.sanitize_for_serialization(model)  # type: ignore[no-any-return,no-untyped-call]

    def sync(self) -> None:
        """One pass: provision pending claims of our class, delete released volumes."""
        volumes = [self._plain(pv) for pv in self.core.list_persistent_volume().items]
        existing = {pv["metadata"]["name"]: pv for pv in volumes}
        for item in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            claim = self._plain(item)
            ours = claim["spec"].get("storageClassName") == self.storage_class
            pending = claim.get("status", {}).get("phase") == "Pending"
            if ours and pending and volume_name(claim["metadata"]["uid"]) not in existing:
                self.provision(claim)
        for name, volume in existing.items():
            annotations = volume["metadata"].get("annotations") or {}
            released = (volume.get("status") or {}).get("phase") == "Released"
            if annotations.get(_PROVISIONED_BY) == PROVISIONER and released:
                self.delete(name)

    def provision(self, claim: Mapping[str, Any]) -> None:
        folder = self.volumes / claim["metadata"]["uid"]
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # world-writable: see the module docstring
        try:
            volume = build_volume(claim, folder, self.node)
            self.core.create_persistent_volume(volume)  # type: ignore[arg-type]
        except ApiException as error:
            if error.status != 409:  # made by an earlier pass
                raise
        meta = claim["metadata"]
        log.info("provisioned %s for %s/%s", folder, meta["namespace"], meta["name"])

    def delete(self, name: str) -> None:
        shutil.rmtree(self.volumes / name.removeprefix("pvc-"), ignore_errors=True)
        try:
            self.core.delete_persistent_volume(name)
        except ApiException as error:
            if error.status != 404:
                raise
        log.info("deleted released volume %s", name)


def run_provisioner(
    kubeconfig: str,
    volumes: Path,
    stop: threading.Event,
    storage_class: str = "beatkeeper-local",
    node: str = "beatkeeper-node",
) -> None:
    """Poll until `stop`: claims are few here, and a second's delay is what binding takes."""
    client = kubernetes.config.new_client_from_config(kubeconfig)  # type: ignore[no-untyped-call]
    provisioner = Provisioner(client, volumes, storage_class, node)
    while not stop.wait(_POLL_SECONDS):
        try:
            provisioner.sync()
        except Exception as error:  # the apiserver restarting, going away: try again
            log.warning("provisioning pass failed (%s); trying again", error)
    client.close()
