"""Pure parts of the launcher: build cache keys, certificates, kubeconfig."""

from __future__ import annotations

import base64
import shutil
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from beatkeeper.pki import CertificateAuthority
from beatkeeper_devenv.build import GoBuild
from beatkeeper_devenv.cluster import free_port, write_kubeconfig

MODULE = Path(__file__).resolve().parents[1] / "cluster"


def copy_module(tmp_path: Path) -> Path:
    target = tmp_path / "cluster"
    shutil.copytree(MODULE, target)
    return target


def test_binary_name_changes_only_with_inputs(tmp_path: Path) -> None:
    module = copy_module(tmp_path)
    build = GoBuild(module_dir=module, cache_dir=tmp_path / "cache")
    first = build.binary
    assert first == build.binary
    assert first.parent == tmp_path / "cache" / "bin"
    (module / "README").write_text("not an input")
    assert build.binary == first
    (module / "main.go").write_text((module / "main.go").read_text() + "\n// changed\n")
    assert build.binary != first


def test_version_comes_from_go_mod_and_lands_in_ldflags() -> None:
    build = GoBuild(module_dir=MODULE, cache_dir=Path("/unused"))
    version = build.kubernetes_version
    assert version.startswith("v1.3")
    flags = build.ldflags()
    minor = version.split(".")[1]
    assert f"k8s.io/component-base/version.gitVersion={version}" in flags
    assert f"k8s.io/client-go/pkg/version.gitMinor={minor}" in flags
    assert build.env()["GOTOOLCHAIN"] == "local"
    assert build.env()["CGO_ENABLED"] == "0"


def test_go_module_pins_every_staging_module_to_one_version() -> None:
    text = (MODULE / "go.mod").read_text()
    version = GoBuild(module_dir=MODULE, cache_dir=Path("/unused")).kubernetes_version
    staging = version.replace("v1.", "v0.", 1)
    replaced = [line.split() for line in text.splitlines() if line.strip().startswith("k8s.io/")]
    pins = {words[0]: words[-1] for words in replaced if "=>" in words}
    assert len(pins) >= 29
    assert set(pins.values()) == {staging}


def test_serving_certificate_verifies_against_the_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    pair = ca.issue_serving(tmp_path, "server", ["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate(pair.cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    context = ssl.create_default_context(cafile=str(ca.pair.cert_path))
    context.load_cert_chain(pair.cert_path, pair.key_path)  # key matches cert
    assert pair.key_path.stat().st_mode & 0o777 == 0o600
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))


def test_kubeconfig_uses_token_and_embedded_ca(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:6443", b"PEM", "tok")
    config = yaml.safe_load(path.read_text())
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"PEM"
    assert config["users"][0]["user"] == {"token": "tok"}
    assert config["current-context"] == config["contexts"][0]["name"]


@pytest.mark.parametrize("_", range(3))
def test_free_port_is_bindable_on_loopback(_: int) -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
