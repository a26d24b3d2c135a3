"""Real users of a cluster, for tests that check who may do what.

Two kinds, both authenticated by the apiserver itself (no impersonation):

- a client certificate signed by the cluster's client CA: the apiserver reads the
  user from its CN and the groups from its O attributes. Only where the CA's key is
  at hand: the local control plane's (`local_ca`).
- a ServiceAccount's token from the TokenRequest API (`kubectl create token`):
  any cluster; the user is `system:serviceaccount:NAMESPACE:NAME`, in the groups
  `system:serviceaccounts` and `system:serviceaccounts:NAMESPACE`.

Each user gets a kubeconfig of its own, for the same cluster as the admin's, so
`kubectl --kubeconfig USER.kubeconfig ...` acts as that user; `impersonation()`
gives the admin's `kubectl auth can-i ... --as` arguments for the same identity.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from beatkeeper.pki import CertificateAuthority, KeyPair
from beatkeeper_devenv.kube import kubectl


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]  # as the credential says (the apiserver adds system:authenticated)
    kubeconfig: Path

    def impersonation(self) -> list[str]:
        """`--as` and `--as-group` arguments naming this user (for an admin's kubectl)."""
        return [f"--as={self.name}", *(f"--as-group={group}" for group in self.groups)]


def _current_cluster(kubeconfig: Path) -> dict[str, Any]:
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = dict(
        next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    )
    authority = cluster.get("certificate-authority")
    if authority and "certificate-authority-data" not in cluster:  # a path: inline it
        path = Path(authority) if Path(authority).is_absolute() else kubeconfig.parent / authority
        cluster.pop("certificate-authority")
        cluster["certificate-authority-data"] = base64.b64encode(path.read_bytes()).decode()
    return cluster


def _write_user_kubeconfig(admin: Path, path: Path, name: str, user: dict[str, str]) -> Path:
    """A kubeconfig for the admin's current cluster with `user`'s credentials."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": _current_cluster(admin)}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "cluster", "user": name}}],
        "current-context": name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def local_ca(kubeconfig: Path) -> CertificateAuthority | None:
    """The client CA of the local control plane whose admin kubeconfig this is, or None.

    `LocalControlPlane` keeps its CA in `pki/` beside the kubeconfig it writes, and
    the same CA signs the apiserver's serving certificate and verifies client ones;
    it is taken only when its certificate is the one this kubeconfig trusts.
    """
    pair = KeyPair(kubeconfig.parent / "pki" / "ca.crt", kubeconfig.parent / "pki" / "ca.key")
    if not (pair.cert_path.is_file() and pair.key_path.is_file()):
        return None
    trusted = _current_cluster(kubeconfig).get("certificate-authority-data")
    if not trusted or base64.b64decode(trusted) != pair.cert_path.read_bytes():
        return None
    return CertificateAuthority(pair)


def certificate_user(
    kubeconfig: Path,
    ca: CertificateAuthority,
    directory: Path,
    name: str,
    groups: tuple[str, ...] = (),
) -> User:
    """A user `name` in `groups`, by a client certificate `ca` signs."""
    file_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    pair = ca.issue_client(directory, file_name, name, groups)
    credentials = {
        "client-certificate-data": base64.b64encode(pair.cert_path.read_bytes()).decode(),
        "client-key-data": base64.b64encode(pair.key_path.read_bytes()).decode(),
    }
    path = _write_user_kubeconfig(
        kubeconfig, directory / f"{file_name}.kubeconfig", name, credentials
    )
    return User(name, groups, path)


def service_account_user(
    kubeconfig: Path, directory: Path, namespace: str, name: str, duration: str = "1h"
) -> User:
    """The ServiceAccount `namespace/name` (created if missing), by a token it is issued."""
    exists = kubectl(kubeconfig, "get", "serviceaccount", name, "-n", namespace, check=False)
    if exists.returncode != 0:
        kubectl(kubeconfig, "create", "serviceaccount", name, "-n", namespace)
    token = kubectl(
        kubeconfig, "create", "token", name, "-n", namespace, f"--duration={duration}"
    ).stdout.strip()
    user = f"system:serviceaccount:{namespace}:{name}"
    path = _write_user_kubeconfig(
        kubeconfig, directory / f"sa-{namespace}-{name}.kubeconfig", user, {"token": token}
    )
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}")
    return User(user, groups, path)
