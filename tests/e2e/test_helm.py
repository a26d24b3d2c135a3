"""The Helm chart against the real apiserver: render, validate, install, upgrade, uninstall.

Every value set in charts/beatkeeper/ci/ is rendered and sent to the apiserver with
`kubectl apply --dry-run=server` in a namespace that enforces Pod Security "restricted"
(warnings count as failures). Then one release goes through `helm install`, `helm upgrade`
with changed values and `helm uninstall`, and `kubectl auth can-i` shows what the operator's
ServiceAccount may and may not do in cluster-wide and in namespaced mode.

This release is about what the apiserver accepts and what RBAC grants, so it does not wait
for readiness (tests/e2e/test_chart_on_node.py runs a release on the node for real). The
webhook configuration it installs is scoped by a namespaceSelector that matches no namespace
here, so the apiserver never calls its Service while the other tests run.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import apply, eventually, get_json

from beatkeeper_devenv.helm import Helm, ensure_helm
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.settings import DevSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "beatkeeper"
VALUE_SETS = sorted(path.name.removesuffix("-values.yaml") for path in CHART.glob("ci/*.yaml"))
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}
# A label no namespace carries: the installed webhook configuration never matches.
NO_WEBHOOK_CALLS = {"matchLabels": {"beatkeeper.dev/e2e-webhook": "never"}}


@pytest.fixture(scope="module")
def helm(kubeconfig: Path, crds: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = ensure_helm(DevSettings.from_env(os.environ))
    return Helm(binary, kubeconfig, tmp_path_factory.mktemp("helm-home"))


def new_namespace(kubeconfig: Path, labels: dict[str, str] | None = None) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl(kubeconfig, "create", "namespace", name)
    if labels:
        kubectl(kubeconfig, "label", "namespace", name, *(f"{k}={v}" for k, v in labels.items()))
    return name


@pytest.fixture
def namespaces(kubeconfig: Path) -> Iterator[list[str]]:
    """Extra namespaces a test makes (team namespaces), deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", "--ignore-not-found")


def stub_crd(plural: str, kind: str) -> dict[str, Any]:
    # Only the kinds: cert-manager's real schemas are not installed here.
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.cert-manager.io"},
        "spec": {
            "group": "cert-manager.io",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def cert_manager_kinds(kubeconfig: Path) -> Iterator[None]:
    crds = [stub_crd("certificates", "Certificate"), stub_crd("issuers", "Issuer")]
    kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(crds))
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *names)
    yield
    kubectl(kubeconfig, "delete", "--wait=false", "--ignore-not-found", *names)


def value_file(name: str) -> list[str]:
    return ["-f", str(CHART / "ci" / f"{name}-values.yaml")]


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# Every value set, validated by the apiserver


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_chart_is_accepted_by_the_apiserver(
    helm: Helm,
    kubeconfig: Path,
    namespaces: list[str],
    request: pytest.FixtureRequest,
    name: str,
) -> None:
    namespace = new_namespace(kubeconfig, RESTRICTED)
    namespaces.append(namespace)
    options = value_file(name)
    if name == "namespaced":
        teams = [new_namespace(kubeconfig), new_namespace(kubeconfig)]
        namespaces.extend(teams)
        options += ["--set", f"watchNamespaces={{{','.join(teams)}}}"]
    if name == "cert-manager":
        request.getfixturevalue("cert_manager_kinds")
    rendered = helm("template", "bk", str(CHART), "-n", namespace, *options).stdout
    # Every rendered object names its namespace (Roles go to the watched ones).
    result = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "would violate PodSecurity" not in result.stderr, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    accepted = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(documents(rendered)), result.stdout


def test_pod_security_admission_flags_a_weaker_context(
    helm: Helm, kubeconfig: Path, namespaces: list[str]
) -> None:
    """The check above has teeth: the apiserver here does warn on non-restricted pods."""
    namespace = new_namespace(kubeconfig, RESTRICTED)
    namespaces.append(namespace)
    weaker = ["--set", "containerSecurityContext.allowPrivilegeEscalation=true"]
    rendered = helm("template", "bk", str(CHART), "-n", namespace, *weaker).stdout
    result = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert 'would violate PodSecurity "restricted:latest"' in result.stderr
    assert "allowPrivilegeEscalation != false" in result.stderr


# One release: install, upgrade, uninstall


@dataclass
class Release:
    helm: Helm
    kubeconfig: Path
    name: str
    namespace: str
    values: Path

    @property
    def fullname(self) -> str:
        return f"{self.name}-beatkeeper"

    def install(self, *options: str) -> str:
        return self.helm(
            "install", self.name, str(CHART), "-n", self.namespace, "-f", str(self.values), *options
        ).stdout

    def upgrade(self, *options: str) -> str:
        return self.helm(
            "upgrade", self.name, str(CHART), "-n", self.namespace, "-f", str(self.values), *options
        ).stdout

    def manifest(self) -> str:
        return self.helm("get", "manifest", self.name, "-n", self.namespace).stdout

    def existing(self, manifest: str) -> list[str]:
        """kind/name of the manifest's objects that exist in the cluster."""
        result = kubectl(
            self.kubeconfig, "get", "--ignore-not-found", "-o", "name", "-f", "-", stdin=manifest
        )
        return result.stdout.split()

    def secret(self, name: str) -> dict[str, str]:
        data = get_json(self.kubeconfig, "secret", name, "-n", self.namespace)["data"]
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    def ca_bundles(self) -> set[str]:
        config = get_json(self.kubeconfig, "validatingwebhookconfiguration", self.fullname)
        return {hook["clientConfig"]["caBundle"] for hook in config["webhooks"]}

    def account(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}-{component}"


@pytest.fixture
def release(helm: Helm, kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Release]:
    kubectl(
        kubeconfig, "label", "namespace", namespace, *(f"{k}={v}" for k, v in RESTRICTED.items())
    )
    kubectl(
        kubeconfig,
        "create",
        "secret",
        "generic",
        "flower-auth",
        "-n",
        namespace,
        "--from-literal=auth=admin:e2e-only",
    )
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "redis": {"bundled": {"enabled": True, "persistence": {"size": "1Gi"}}},
                "flower": {"enabled": True, "basicAuth": {"existingSecret": "flower-auth"}},
                "webhook": {"namespaceSelector": NO_WEBHOOK_CALLS, "timeoutSeconds": 2},
            }
        )
    )
    name = f"bk{uuid.uuid4().hex[:6]}"
    yield Release(helm, kubeconfig, name, namespace, values)
    helm("uninstall", name, "-n", namespace, "--ignore-not-found", check=False)


def worker_pool() -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "default"},
        "spec": {"image": "worker:1", "allowedTasks": ["beatkeeper.*"], "replicas": 1},
    }


def scheduled_task() -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "30 2 * * *",
            "workerPool": "default",
            "task": {"name": "beatkeeper.sleep"},
        },
    }


def custom_resources(kubeconfig: Path, namespace: str) -> dict[str, str]:
    items = get_json(kubeconfig, "scheduledtasks,workerpools", "-n", namespace)["items"]
    return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["uid"] for i in items}


def pods_by_component(kubeconfig: Path, release: Release) -> dict[str, int]:
    pods = get_json(
        kubeconfig, "pods", "-n", release.namespace, f"-l=app.kubernetes.io/instance={release.name}"
    )["items"]
    counts: dict[str, int] = {}
    for pod in pods:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        counts[component] = counts.get(component, 0) + 1
    return counts


def container_env(kubeconfig: Path, release: Release, component: str) -> dict[str, str]:
    deployment = get_json(
        kubeconfig, "deployment", f"{release.fullname}-{component}", "-n", release.namespace
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


# kubectl auth can-i: (verb, resource, where, subresource, allowed). `where` is a namespace
# role: "team" (a watched team namespace), "other" (an unwatched one), "release" (the
# operator's own namespace), "all" (every namespace) or "cluster" (cluster-scoped).
Check = tuple[str, str, str, str, bool]
ST, WP = "scheduledtasks.beatkeeper.dev", "workerpools.beatkeeper.dev"
CRD = "customresourcedefinitions.apiextensions.k8s.io"

# What the operator calls (measured: test_rbac_least_privilege.py) and what it must not do.
OPERATOR_NEEDS: list[Check] = [
    ("watch", ST, "all", "", True),
    ("get", ST, "team", "", True),
    ("patch", ST, "team", "", True),
    ("patch", ST, "team", "status", True),
    ("list", WP, "all", "", True),
    ("patch", WP, "team", "", True),
    ("patch", WP, "team", "status", True),
    ("update", WP, "team", "finalizers", True),
    ("create", "events", "team", "", True),
    ("get", "events", "team", "", True),
    ("patch", "events", "team", "", True),
    ("create", "deployments.apps", "team", "", True),
    ("patch", "deployments.apps", "team", "", True),
    ("watch", "deployments.apps", "all", "", True),
    ("list", "pods", "team", "", True),
    ("watch", "pods", "all", "", True),
    ("create", "secrets", "team", "", True),
    ("update", "secrets", "team", "", True),
    ("list", CRD, "cluster", "", True),
    ("create", "subjectaccessreviews.authorization.k8s.io", "cluster", "", True),
]
OPERATOR_MUST_NOT: list[Check] = [
    ("update", ST, "team", "", False),
    ("update", WP, "team", "status", False),
    ("update", ST, "team", "finalizers", False),
    ("get", WP, "team", "", False),
    ("patch", "events.events.k8s.io", "team", "", False),
    ("delete", "deployments.apps", "team", "", False),
    ("update", "deployments.apps", "team", "", False),
    ("get", "pods", "team", "", False),
    ("watch", "namespaces", "cluster", "", False),  # kopf needs them only in namespaced mode
    ("get", "secrets", "team", "", False),
    ("list", "secrets", "all", "", False),
    ("get", "secrets", "release", "", False),
    ("watch", "secrets", "release", "", False),
    ("get", "configmaps", "team", "", False),
    ("*", "*", "all", "", False),
    ("*", ST, "team", "", False),
    ("create", "*", "team", "", False),
    ("create", ST, "team", "", False),
    ("delete", ST, "team", "", False),
    ("delete", WP, "team", "", False),
    ("deletecollection", "deployments.apps", "team", "", False),
    ("create", "pods", "team", "", False),
    ("delete", "pods", "team", "", False),
    ("create", "pods", "team", "exec", False),
    ("get", "pods", "team", "log", False),
    ("create", "serviceaccounts", "team", "token", False),
    ("impersonate", "serviceaccounts", "team", "", False),
    ("create", "rolebindings.rbac.authorization.k8s.io", "team", "", False),
    ("create", "clusterroles.rbac.authorization.k8s.io", "cluster", "", False),
    ("bind", "clusterroles.rbac.authorization.k8s.io", "cluster", "", False),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", "cluster", "", False),
    ("create", CRD, "cluster", "", False),
    ("update", CRD, "cluster", "", False),
    ("delete", "namespaces", "cluster", "", False),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io", "cluster", "", False),
]
BEAT_MUST_NOT: list[Check] = [
    ("list", ST, "all", "", False),
    ("get", "secrets", "release", "", False),
    ("create", "events", "release", "", False),
    ("list", "pods", "release", "", False),
    ("get", "namespaces", "cluster", "", False),
]
NAMESPACED: list[Check] = [
    ("list", ST, "team", "", True),
    ("patch", ST, "team", "status", True),
    ("update", WP, "team", "finalizers", True),
    ("create", "deployments.apps", "team", "", True),
    ("create", "events", "team", "", True),
    ("watch", "pods", "team", "", True),
    ("list", CRD, "cluster", "", True),
    ("watch", "namespaces", "cluster", "", True),
    ("list", ST, "other", "", False),
    ("patch", WP, "other", "status", False),
    ("create", "deployments.apps", "other", "", False),
    ("create", "events", "other", "", False),
    ("list", "pods", "other", "", False),
    ("list", ST, "all", "", False),
    ("list", "deployments.apps", "all", "", False),
    ("create", "secrets", "team", "", True),
    ("create", "secrets", "other", "", False),
    ("get", "secrets", "team", "", False),
    ("*", "*", "team", "", False),
]


def denials(kubeconfig: Path, user: str, checks: list[Check], where: dict[str, str]) -> list[str]:
    """The checks whose answer differs from the expected one (empty: all as expected)."""
    wrong = []
    for verb, resource, scope, subresource, allowed in checks:
        args = ["auth", "can-i", verb, resource, f"--as={user}"]
        if scope == "all":
            args.append("--all-namespaces")
        elif scope != "cluster":
            args += ["-n", where[scope]]
        if subresource:
            args.append(f"--subresource={subresource}")
        answer = kubectl(kubeconfig, *args, check=False)
        assert answer.returncode in (0, 1), answer.stderr
        if (answer.returncode == 0) != allowed:
            wrong.append(
                f"can-i {verb} {resource}/{subresource} in {scope}: {answer.stdout.strip()}"
            )
    return wrong


def test_install_upgrade_uninstall(
    release: Release, kubeconfig: Path, namespaces: list[str]
) -> None:
    team, other = new_namespace(kubeconfig), new_namespace(kubeconfig)
    namespaces.extend([team, other])
    where = {"team": team, "other": other, "release": release.namespace}

    # install: every object exists, and pods pass Pod Security "restricted" admission
    notes = release.install()
    assert "kubectl get st,wp -A" in notes
    installed = release.manifest()
    objects = documents(installed)
    assert len(release.existing(installed)) == len(objects), release.existing(installed)
    kinds = {doc["kind"] for doc in objects}
    assert {"Deployment", "StatefulSet", "ValidatingWebhookConfiguration", "ClusterRole"} <= kinds

    def admitted() -> bool:
        """the controllers' pods passed Pod Security "restricted" admission"""
        expected = {"operator": 1, "beat": 2, "flower": 1, "redis": 1}
        return pods_by_component(kubeconfig, release) == expected

    eventually(admitted, timeout=60)
    password = release.secret(f"{release.fullname}-redis")["password"]
    serving = release.secret(f"{release.fullname}-webhook-tls")
    bundles = release.ca_bundles()

    apply(kubeconfig, team, worker_pool())
    apply(kubeconfig, team, scheduled_task())
    resources = custom_resources(kubeconfig, team)
    assert set(resources) == {"WorkerPool/default", "ScheduledTask/nightly"}

    operator, beat = release.account("operator"), release.account("beat")
    assert denials(kubeconfig, operator, OPERATOR_NEEDS + OPERATOR_MUST_NOT, where) == []
    assert denials(kubeconfig, beat, BEAT_MUST_NOT, where) == []

    # upgrade with changed values: namespaced mode, three beats, a faster resync
    release.upgrade(
        "--set",
        f"watchNamespaces={{{team}}}",
        "--set",
        "beat.replicas=3",
        "--set",
        "operator.resyncSeconds=5",
    )
    upgraded = release.manifest()
    assert len(release.existing(upgraded)) == len(documents(upgraded)), release.existing(upgraded)
    assert custom_resources(kubeconfig, team) == resources  # same objects, same uids
    assert release.secret(f"{release.fullname}-redis")["password"] == password
    assert release.secret(f"{release.fullname}-webhook-tls") == serving
    assert release.ca_bundles() == bundles
    env = container_env(kubeconfig, release, "operator")
    assert env["BEATKEEPER_NAMESPACES"] == team
    assert env["BEATKEEPER_RESYNC_SECONDS"] == "5"
    beats = get_json(kubeconfig, "deployment", f"{release.fullname}-beat", "-n", release.namespace)
    assert beats["spec"]["replicas"] == 3
    assert denials(kubeconfig, operator, NAMESPACED, where) == []

    # uninstall: the chart's objects go, the CRDs (from crds/) and the CRs stay
    release.helm("uninstall", release.name, "-n", release.namespace)

    def gone() -> bool:
        """every object of the last manifest is deleted"""
        return release.existing(upgraded) == []

    eventually(gone, timeout=60)
    for name in ("scheduledtasks.beatkeeper.dev", "workerpools.beatkeeper.dev"):
        kubectl(kubeconfig, "get", "crd", name)
    assert custom_resources(kubeconfig, team) == resources
