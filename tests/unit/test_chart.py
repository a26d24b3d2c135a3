"""The Helm chart, rendered by a real Helm (built from its Go module) without a cluster.

The chart's CRDs are the repository's, `helm lint --strict` passes for every value set in
the chart's ci/ folder, values.schema.json refuses wrong types, and the rendered objects
keep the promises the chart makes: least-privilege RBAC, restricted pods, a webhook whose
caBundle verifies its serving certificate. tests/e2e/test_helm.py takes the same value sets
to the real apiserver.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from beatkeeper.api import crd
from beatkeeper_devenv.helm import HELM_VERSION, ensure_helm
from beatkeeper_devenv.settings import DevSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "beatkeeper"
VALUE_SETS = sorted(path.name.removesuffix("-values.yaml") for path in CHART.glob("ci/*.yaml"))
RELEASE, NAMESPACE = "bk", "beatkeeper-system"


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm(DevSettings.from_env(os.environ))


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )


def render(helm: Path, *options: str) -> list[dict[str, Any]]:
    result = run_helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, *options)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def value_set(name: str) -> list[str]:
    return ["-f", str(CHART / "ci" / f"{name}-values.yaml")]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(workload name, pod spec, container) for every workload the chart renders."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield doc["metadata"]["name"], pod, container


def test_helm_is_the_pinned_build(helm: Path) -> None:
    assert run_helm(helm, "version", "--template", "{{.Version}}").stdout == HELM_VERSION
    # Without a cluster, Helm renders for the Kubernetes it was built for (not its 1.20).
    docs = render(helm, "--show-only", "templates/operator-deployment.yaml")
    assert docs[0]["kind"] == "Deployment"  # kubeVersion ">=1.28.0-0" let it render


# CRDs


def test_chart_crds_are_the_repository_crds() -> None:
    repo = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == repo
    for name in repo:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            "run: python -m beatkeeper.api.crd --write crds --write charts/beatkeeper/crds"
        )
    assert crd.drifted(CHART / "crds") == []


# Lint and schema


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(helm: Path, name: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *value_set(name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout


WRONG_VALUES = {
    "beat.replicas=two": "beat.replicas: Invalid type. Expected: integer",
    "operator.resyncSeconds=soon": "operator.resyncSeconds: Invalid type. Expected: number",
    "webhook.enabled=maybe": "webhook.enabled: Invalid type. Expected: boolean",
    "webhook.failurePolicy=Retry": "webhook.failurePolicy",
    "webhook.timeoutSeconds=60": "webhook.timeoutSeconds: Must be less than or equal to 30",
    "watchNamespaces=team-a": "watchNamespaces: Invalid type. Expected: array",
    "watchNamespaces={Team_A}": "watchNamespaces.0: Does not match pattern",
    "redis.bundled.port=0": "redis.bundled.port: Must be greater than or equal to 1",
    "redis.external.tls.verify=sometimes": "redis.external.tls.verify",
    "image.digest=latest": "image.digest: Does not match pattern",
    "operator.extraEnv[0].value=x": "operator.extraEnv.0: name is required",
    "imagePullPolicy=Always": "Additional property imagePullPolicy is not allowed",
    "redis.external.existingSecret=": "redis.external.existingSecret: String length must be",
    "flower.enabled=true": "flower.basicAuth.existingSecret: String length must be",
    "redis.bundled.auth.passwordSeed=short": "redis.bundled.auth.passwordSeed: Does not match",
}


@pytest.mark.parametrize("assignment", sorted(WRONG_VALUES))
def test_schema_refuses_wrong_values(helm: Path, assignment: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", assignment)
    assert result.returncode != 0
    assert WRONG_VALUES[assignment] in result.stderr


@pytest.mark.parametrize(
    "assignment",
    ["redis.bundled.enabled=true,redis.external.existingSecret=", "beat.replicas=0"],
)
def test_schema_accepts_valid_values(helm: Path, assignment: str) -> None:
    render(helm, "--set", assignment)


def test_every_value_is_documented() -> None:
    """Each key in values.yaml has a comment above it, or sits in a documented block."""
    undocumented: list[str] = []
    documented_above: list[tuple[int, bool]] = []  # (indent, documented) of enclosing keys
    previous = ""
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        key = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if key:
            depth = len(key.group(1))
            documented_above = [(d, ok) for d, ok in documented_above if d < depth]
            covered = previous.lstrip().startswith("#") or any(ok for _, ok in documented_above)
            if not covered and not line.rstrip().endswith(":"):
                undocumented.append(f"{number}: {line.strip()}")
            documented_above.append((depth, covered))
        if line.strip():
            previous = line
    assert undocumented == []


# What the rendered objects promise


def rbac_rules(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']}/{d['metadata'].get('namespace', '')}", rule)
        for d in docs
        if d["kind"] in ("ClusterRole", "Role")
        for rule in d["rules"]
    ]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rbac_is_least_privilege(helm: Path, name: str) -> None:
    """No wildcard, no way to read Secrets or ConfigMaps, to exec or to change RBAC.

    What the operator really uses is measured end to end
    (tests/e2e/test_rbac_least_privilege.py); this holds for every value set.
    """
    for where, rule in rbac_rules(render(helm, *value_set(name))):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"{where}: wildcard in {field}"
        assert not {"configmaps", "pods/exec", "clusterroles"} & set(rule["resources"])
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        if "secrets" in rule["resources"]:  # each namespace's Redis credential: written only
            assert rule["resources"] == ["secrets"], where
            assert set(rule["verbs"]) <= {"create", "update"}, where


def test_namespaced_mode_uses_roles(helm: Path) -> None:
    docs = render(helm, "--set", "watchNamespaces={team-b,team-a,team-a}")
    roles = sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role")
    bindings = sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding")
    assert roles == bindings == ["team-a", "team-b"]
    cluster = find(docs, "ClusterRole", f"{RELEASE}-beatkeeper-operator")
    assert {r for rule in cluster["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
        "subjectaccessreviews",
    }
    operator = find(docs, "Deployment", f"{RELEASE}-beatkeeper-operator")
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BEATKEEPER_NAMESPACES"] == "team-a,team-b"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_are_restricted(helm: Path, name: str) -> None:
    for workload, pod, container in containers(render(helm, *value_set(name))):
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context["runAsNonRoot"] is True, workload
        assert isinstance(context["runAsUser"], int), workload
        assert context["runAsUser"] > 0, workload
        assert context["allowPrivilegeEscalation"] is False, workload
        assert context["capabilities"] == {"drop": ["ALL"]}, workload
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        assert context["readOnlyRootFilesystem"] is True, workload
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, workload
        assert container["resources"]["requests"], workload
        if not workload.endswith("-operator"):
            assert pod["automountServiceAccountToken"] is False, workload


def test_operator_and_beat_deployments(helm: Path) -> None:
    docs = render(helm)
    operator = find(docs, "Deployment", f"{RELEASE}-beatkeeper-operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e for e in container["env"]}
    assert env["BEATKEEPER_WEBHOOK"]["value"] == "service"
    assert env["BEATKEEPER_WEBHOOK_LISTEN"]["value"] == "0.0.0.0"
    assert env["BEATKEEPER_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "beatkeeper-redis",
        "key": "url",
    }
    beat = find(docs, "Deployment", f"{RELEASE}-beatkeeper-beat")
    assert beat["spec"]["replicas"] == 2
    assert beat["spec"]["template"]["spec"]["containers"][0]["command"] == ["beatkeeper", "beat"]
    assert find(docs, "PodDisruptionBudget", f"{RELEASE}-beatkeeper-beat")


def _verify_signed_by(leaf: x509.Certificate, ca: x509.Certificate) -> None:
    key = ca.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert leaf.signature_hash_algorithm is not None
    key.verify(
        leaf.signature,
        leaf.tbs_certificate_bytes,
        padding.PKCS1v15(),
        leaf.signature_hash_algorithm,
    )


def test_generated_webhook_certificate_matches_the_configuration(helm: Path) -> None:
    docs = render(helm)
    secret = find(docs, "Secret", f"{RELEASE}-beatkeeper-webhook-tls")
    config = find(docs, "ValidatingWebhookConfiguration", f"{RELEASE}-beatkeeper")
    ca_pem = base64.b64decode(secret["data"]["ca.crt"])
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    _verify_signed_by(leaf, x509.load_pem_x509_certificate(ca_pem))
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    service = f"{RELEASE}-beatkeeper-webhook"
    assert f"{service}.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)
    assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=3000)
    paths = {}
    for webhook in config["webhooks"]:
        assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == ca_pem
        assert webhook["clientConfig"]["service"]["name"] == service
        assert webhook["failurePolicy"] == "Ignore"
        assert webhook["sideEffects"] == "None"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["timeoutSeconds"] <= 30
        (rule,) = webhook["rules"]
        paths[webhook["clientConfig"]["service"]["path"]] = rule["resources"]
        assert rule["operations"] == ["CREATE", "UPDATE"]
        assert rule["apiGroups"] == ["beatkeeper.dev"]
        assert rule["apiVersions"] == ["v1alpha1"]
    # workerpools/scale: the webhook refuses kubectl scale on an autoscaled pool.
    assert paths == {
        "/scheduledtask": ["scheduledtasks"],
        "/workerpool": ["workerpools", "workerpools/scale"],
    }


def test_cert_manager_mode(helm: Path) -> None:
    docs = render(helm, *value_set("cert-manager"))
    certificate = find(docs, "Certificate", f"{RELEASE}-beatkeeper-webhook")
    assert certificate["spec"]["secretName"] == f"{RELEASE}-beatkeeper-webhook-tls"
    assert certificate["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    assert not [d for d in docs if d["kind"] in ("Secret", "Issuer")]
    config = find(docs, "ValidatingWebhookConfiguration", f"{RELEASE}-beatkeeper")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{RELEASE}-beatkeeper-webhook"
    )
    assert all("caBundle" not in w["clientConfig"] for w in config["webhooks"])
    self_signed = render(helm, "--set", "webhook.certManager.enabled=true")
    assert find(self_signed, "Issuer", f"{RELEASE}-beatkeeper-selfsigned")


def test_bundled_redis(helm: Path) -> None:
    docs = render(helm, *value_set("bundled-redis"))
    name = f"{RELEASE}-beatkeeper-redis"
    secret = find(docs, "Secret", name)
    password = base64.b64decode(secret["data"]["password"]).decode()
    url = base64.b64decode(secret["data"]["url"]).decode()
    assert len(password) == 32
    assert url == f"redis://:{password}@{name}.{NAMESPACE}.svc.cluster.local:6379/0"
    redis = find(docs, "StatefulSet", name)
    container = redis["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    assert "--maxmemory-policy noeviction" in script
    assert "--appendonly yes" in script
    assert "maxmemory 200mb" in script
    assert password not in yaml.safe_dump(redis)  # from the Secret, through stdin
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
        "storage": "1Gi"
    }
    for workload in ("operator", "beat"):
        deployment = find(docs, "Deployment", f"{RELEASE}-beatkeeper-{workload}")
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["BEATKEEPER_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": name,
            "key": "password",
        }
        # Kubernetes expands $(VAR) from the variable defined just before.
        assert env["BEATKEEPER_REDIS_URL"]["value"] == url.replace(
            password, "$(BEATKEEPER_REDIS_PASSWORD)"
        )


def secret_key_refs(value: Any) -> Iterator[dict[str, str]]:
    if isinstance(value, dict):
        if "secretKeyRef" in value:
            yield value["secretKeyRef"]
        for child in value.values():
            yield from secret_key_refs(child)
    elif isinstance(value, list):
        for child in value:
            yield from secret_key_refs(child)


def test_bundled_redis_with_the_users_password_secret(helm: Path) -> None:
    """For GitOps tools that render with `helm template`, where lookup finds nothing."""
    docs = render(
        helm, *value_set("bundled-redis"), "--set", "redis.bundled.auth.existingSecret=mine"
    )
    assert not [d for d in docs if d["kind"] == "Secret" and "redis" in d["metadata"]["name"]]
    refs = {(ref["name"], ref["key"]) for ref in secret_key_refs(docs)}
    redis_refs = refs - {("flower-auth", "auth")}
    assert redis_refs == {("mine", "password")}


def test_external_redis_tls_files(helm: Path) -> None:
    docs = render(helm, *value_set("external-tls"))
    for workload in ("operator", "beat", "flower"):
        deployment = find(docs, "Deployment", f"{RELEASE}-beatkeeper-{workload}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["BEATKEEPER_BROKER_TLS_CA_FILE"] == "/etc/beatkeeper/redis-tls/ca/ca.pem"
        assert env["BEATKEEPER_BROKER_TLS_CERT_FILE"] == "/etc/beatkeeper/redis-tls/client/tls.crt"
        assert env["BEATKEEPER_BROKER_TLS_KEY_FILE"] == "/etc/beatkeeper/redis-tls/client/tls.key"
        assert env["BEATKEEPER_BROKER_TLS_VERIFY"] == "required"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["redis-tls-ca"]["secret"]["secretName"] == "redis-ca"
        assert volumes["redis-tls-client"]["secret"]["secretName"] == "redis-client"


def test_flower_uses_the_secret_and_no_default_password(helm: Path) -> None:
    docs = render(helm, *value_set("flower"))
    flower = find(docs, "Deployment", f"{RELEASE}-beatkeeper-flower")
    env = {e["name"]: e for e in flower["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"] == {
        "name": "flower-auth",
        "key": "auth",
    }
    operator = find(docs, "Deployment", f"{RELEASE}-beatkeeper-operator")
    image = operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"registry.example.com/beatkeeper-operator@sha256:{'0123456789abcdef' * 4}"
    assert not [d for d in render(helm) if "flower" in d["metadata"]["name"]]


# Stable renders: what `helm template` (Argo CD) shows must not change from one sync to the next

WEBHOOK_TLS = f"{RELEASE}-beatkeeper-webhook-tls"


def without_generated_webhook_certificate(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents, less the CA and serving certificate the chart makes (see below)."""
    for doc in docs:
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == WEBHOOK_TLS:
            doc["data"] = {}
        for webhook in doc.get("webhooks") or []:  # Validating and Mutating configurations
            webhook["clientConfig"].pop("caBundle", None)
    return docs


def test_rendering_twice_gives_the_same_output(helm: Path) -> None:
    """The bundled Redis password is derived, not random, and needs no lookup.

    With the webhook certificate from cert-manager (what docs/install.md tells Argo CD users
    to set) two renders are byte for byte the same. The certificate the chart generates
    otherwise (Helm's genCA and genSignedCert: new keys, serial numbers and validity on every
    call) is the only difference: `helm install` and `helm upgrade` keep it through lookup.
    """
    options = ("template", RELEASE, str(CHART), "-n", NAMESPACE, *value_set("bundled-redis"))
    cert_manager = ("--set", "webhook.certManager.enabled=true")
    first, second = (run_helm(helm, *options, *cert_manager) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    generated = [render(helm, *value_set("bundled-redis")) for _ in range(2)]
    assert generated[0] != generated[1]  # the generated webhook certificate, as said above
    assert without_generated_webhook_certificate(generated[0]) == (
        without_generated_webhook_certificate(generated[1])
    )


def bundled_password(docs: list[dict[str, Any]]) -> str:
    (secret,) = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-redis")
    ]
    return base64.b64decode(secret["data"]["password"]).decode()


def password_checksums(docs: list[dict[str, Any]]) -> set[str]:
    """The password digests on the pods that use it: Redis, the operator and beat."""
    found = set()
    for kind, name, key in (
        ("StatefulSet", "redis", "checksum/password"),
        ("Deployment", "operator", "checksum/redis-password"),
        ("Deployment", "beat", "checksum/redis-password"),
    ):
        workload = find(docs, kind, f"{RELEASE}-beatkeeper-{name}")
        found.add(workload["spec"]["template"]["metadata"]["annotations"][key])
    return found


def test_bundled_redis_password_is_derived_from_the_seed_and_the_release(helm: Path) -> None:
    seed = "a-seed-of-sixteen-or-more"

    def password(seed: str = seed, namespace: str = NAMESPACE, *options: str) -> str:
        docs = render(
            helm,
            *value_set("bundled-redis"),
            "--set",
            f"redis.bundled.auth.passwordSeed={seed}",
            "-n",
            namespace,  # the last -n is the one Helm takes
            *options,
        )
        return bundled_password(docs)

    derived = password()
    assert re.fullmatch(r"[0-9a-f]{32}", derived)  # 128 bits; a URL needs no escaping
    parts = ["beatkeeper-redis-password", seed, NAMESPACE, f"{RELEASE}-beatkeeper"]
    assert derived == hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    others = {
        password(""),  # the default: from the release's namespace and name alone
        password("another-seed-of-16"),
        password(seed, "elsewhere"),
        password(seed, NAMESPACE, "--set", "fullnameOverride=other"),
    }
    assert derived not in others
    assert len(others) == 4
    # One digest on the three pods that use the password: a new seed restarts all three.
    seeded = (*value_set("bundled-redis"), "--set", f"redis.bundled.auth.passwordSeed={seed}")
    checksums = password_checksums(render(helm, *seeded))
    assert len(checksums) == 1
    assert checksums != password_checksums(render(helm, *value_set("bundled-redis")))
    assert checksums.isdisjoint({derived, derived[:16]})
    users = render(
        helm, *value_set("bundled-redis"), "--set", "redis.bundled.auth.existingSecret=mine"
    )
    for name in ("operator", "beat"):
        deployment = find(users, "Deployment", f"{RELEASE}-beatkeeper-{name}")
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert "checksum/redis-password" not in annotations
