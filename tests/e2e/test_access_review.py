"""No confused deputy: a WorkerPool is admitted only if its author may create what it creates.

Real users of the real apiserver, each with a kubeconfig of its own: client
certificates signed by the local control plane's CA (a user and its groups) and a
ServiceAccount's token. Their rights come from Roles in the test's namespace;
`kubectl auth can-i` shows them, and the operator's webhook asks the same question
with SubjectAccessReviews:

- alice (a certificate, her Role bound to her group) may create and change
  WorkerPools but not Deployments: her pool is refused and names what she lacks;
  labelling or scaling a pool someone else created still works, changing its spec
  does not;
- bob (a ServiceAccount token) may create WorkerPools and Deployments but not
  pods: a pool without a ServiceAccount is admitted and gets its Deployment, one
  that names `spec.template.serviceAccountName` is refused;
- carol (a certificate, bound by name) may create all three: admitted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import apply, eventually, get_json, hostless_pool

from beatkeeper.operator.deployments import deployment_name
from beatkeeper.pki import CertificateAuthority
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.users import User, certificate_user, local_ca, service_account_user

POOLS = ["workerpools.beatkeeper.dev"]
DEPLOYMENTS = ["deployments.apps"]
PODS = ["pods"]
WHY_DEPLOYMENTS = (
    "a WorkerPool creates a Deployment with the operator's rights, so its author needs "
    "that right too"
)


def role(namespace: str, name: str, subject: dict[str, str], *resources: str) -> str:
    """A Role of `resources` (creating them; WorkerPools: also reading, changing, scaling)
    and its RoleBinding to `subject`."""
    rules = [
        {
            "apiGroups": ["beatkeeper.dev"],
            "resources": ["workerpools", "workerpools/scale"],
            "verbs": ["get", "list", "watch", "create", "update", "patch"],
        }
    ]
    for resource in resources:
        plural, _, group = resource.partition(".")
        rules.append({"apiGroups": [group], "resources": [plural], "verbs": ["create"]})
    documents = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [subject],
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})


def can_i(kubeconfig: Path, namespace: str, resource: str, *extra: str) -> str:
    result = kubectl(
        kubeconfig, "auth", "can-i", "create", resource, "-n", namespace, *extra, check=False
    )
    return result.stdout.strip()


def rights(admin: Path, user: User, namespace: str) -> dict[str, str]:
    """`kubectl auth can-i create ...` for each kind, as the user and as the admin asks for
    them (`--as`); both must agree."""
    seen = {}
    for resource in (*POOLS, *DEPLOYMENTS, *PODS):
        own = can_i(user.kubeconfig, namespace, resource)
        impersonated = can_i(admin, namespace, resource, *user.impersonation())
        assert own == impersonated, (resource, own, impersonated)
        seen[resource] = own
    return seen


def pool(name: str, account: str | None = None) -> dict[str, Any]:
    manifest = hostless_pool(name)  # replicas 0: a Deployment without pods
    if account is not None:
        manifest["spec"]["template"] = {"serviceAccountName": account}
    return manifest


def refused(result: Any, message: str) -> None:
    """kubectl failed with the webhook's refusal, `message` and nothing after it."""
    assert result.returncode != 0, result.stdout
    assert result.stderr.strip().endswith("denied the request: " + message), result.stderr


@pytest.fixture
def ca(kubeconfig: Path) -> CertificateAuthority:
    found = local_ca(kubeconfig)
    if found is None:
        pytest.skip(
            "on a cluster given by BEATKEEPER_KUBECONFIG there is no local CA to sign "
            "client-certificate users; the ServiceAccount-token test still runs"
        )
    return found


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return tmp_path / "users"


def test_an_author_who_may_not_create_deployments_is_refused(
    kubeconfig: Path, operator: Any, namespace: str, ca: CertificateAuthority, users: Path
) -> None:
    group = f"pool-authors-{namespace}"
    alice = certificate_user(kubeconfig, ca, users, f"alice-{namespace}", (group,))
    apply(kubeconfig, namespace, role(namespace, "pools", {"kind": "Group", "name": group}))
    assert rights(kubeconfig, alice, namespace) == {
        "workerpools.beatkeeper.dev": "yes",
        "deployments.apps": "no",
        "pods": "no",
    }

    result = apply(alice.kubeconfig, namespace, pool("mine"), check=False)
    refused(
        result,
        f'user "{alice.name}" may not create deployments.apps in namespace "{namespace}": '
        + WHY_DEPLOYMENTS,
    )
    assert "(Forbidden)" in result.stderr
    gone = kubectl(kubeconfig, "get", "workerpool", "mine", "-n", namespace, check=False)
    assert gone.returncode != 0

    # A pool an allowed user made: alice may label it and scale it, not change its spec.
    apply(kubeconfig, namespace, pool("shared"))
    kubectl(alice.kubeconfig, "label", "workerpool", "shared", "-n", namespace, "owner=alice")
    kubectl(alice.kubeconfig, "scale", "workerpool", "shared", "-n", namespace, "--replicas=0")
    changed = kubectl(
        alice.kubeconfig,
        "patch",
        "workerpool",
        "shared",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"concurrency": 3}}',
        check=False,
    )
    refused(
        changed,
        f'user "{alice.name}" may not create deployments.apps in namespace "{namespace}": '
        + WHY_DEPLOYMENTS,
    )
    shared = get_json(kubeconfig, "workerpool", "shared", "-n", namespace)
    assert shared["metadata"]["labels"] == {"owner": "alice"}
    assert shared["spec"]["concurrency"] == 2


def test_an_author_who_may_not_create_pods_cannot_name_a_service_account(
    kubeconfig: Path, operator: Any, namespace: str, users: Path
) -> None:
    bob = service_account_user(kubeconfig, users, namespace, "bob")
    subject = {"kind": "ServiceAccount", "name": "bob", "namespace": namespace}
    apply(kubeconfig, namespace, role(namespace, "pools", subject, *DEPLOYMENTS))
    assert rights(kubeconfig, bob, namespace) == {
        "workerpools.beatkeeper.dev": "yes",
        "deployments.apps": "yes",
        "pods": "no",
    }

    apply(bob.kubeconfig, namespace, pool("plain"))
    eventually(
        lambda: (
            kubectl(
                kubeconfig,
                "get",
                "deployment",
                deployment_name("plain"),
                "-n",
                namespace,
                check=False,
            ).returncode
            == 0
        ),
        timeout=30,
    )

    why = (
        f'user "{bob.name}" may not create pods in namespace "{namespace}": '
        'spec.template.serviceAccountName "builder" runs the pool\'s pods as that '
        "ServiceAccount, which only a user who may create pods in the namespace may do"
    )
    refused(apply(bob.kubeconfig, namespace, pool("builder", "builder"), check=False), why)
    # Nor may bob give his admitted pool a ServiceAccount afterwards.
    refused(apply(bob.kubeconfig, namespace, pool("plain", "builder"), check=False), why)


def test_an_author_with_every_right_is_admitted(
    kubeconfig: Path, operator: Any, namespace: str, ca: CertificateAuthority, users: Path
) -> None:
    carol = certificate_user(kubeconfig, ca, users, f"carol-{namespace}", ("other-team",))
    subject = {"kind": "User", "name": carol.name}
    apply(kubeconfig, namespace, role(namespace, "pools", subject, *DEPLOYMENTS, *PODS))
    kubectl(kubeconfig, "create", "serviceaccount", "builder", "-n", namespace)
    assert set(rights(kubeconfig, carol, namespace).values()) == {"yes"}

    apply(carol.kubeconfig, namespace, pool("builder", "builder"))

    def account() -> str:
        """the operator created the pool's Deployment, running as its ServiceAccount"""
        found = kubectl(
            kubeconfig,
            "get",
            "deployment",
            deployment_name("builder"),
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.template.spec.serviceAccountName}",
            check=False,
        )
        return found.stdout if found.returncode == 0 else ""

    assert eventually(account, timeout=30) == "builder"
