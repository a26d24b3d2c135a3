"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, controller-manager.

There is no kubelet: Deployments get ReplicaSets and Pods, and Pods stay Pending
(the local pod runner stands in for kubelets where that matters). Start order is
etcd -> kube-apiserver -> kube-controller-manager; `stop` goes the other way.
"""

from __future__ import annotations

import base64
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from beatkeeper.devenv.processes import Supervisor, wait_until
from beatkeeper.pki import CertificateAuthority, write_service_account_key

ADMIN_TOKEN = "admin-token"  # noqa: S105 - a local, loopback-only test cluster
_CONTROLLERS = ",".join(
    [
        "deployment-controller",
        "replicaset-controller",
        "garbage-collector-controller",
        "namespace-controller",
        "serviceaccount-controller",
        "pod-garbage-collector-controller",
    ]
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http_ok(url: str, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    request = urllib.request.Request(url)  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        # S310: the URLs are http(s) ones built by this module.
        with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def write_kubeconfig(path: Path, server: str, ca_pem: bytes, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "beatkeeper-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "beatkeeper-local",
                "context": {"cluster": "beatkeeper-local", "user": "admin"},
            }
        ],
        "current-context": "beatkeeper-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


@dataclass
class LocalControlPlane:
    """Starts the three components under `workdir` with the binary from build.py."""

    binary: Path
    workdir: Path
    supervisor: Supervisor
    ready_timeout: float = 180.0
    server: str = ""
    kubeconfig: Path | None = None

    @property
    def log_dir(self) -> Path:
        return self.supervisor.log_dir

    def start(self, kubeconfig: Path | None = None) -> Path:
        pki = self.workdir / "pki"
        ca = CertificateAuthority.create(pki)
        etcd_url = self._start_etcd()
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self.kubeconfig = write_kubeconfig(
            kubeconfig or self.workdir / "kubeconfig", self.server, ca.cert_pem, ADMIN_TOKEN
        )
        self._start_apiserver(ca, etcd_url, port)
        self._start_controller_manager(self.kubeconfig)
        return self.kubeconfig

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        etcd = self.supervisor.start(
            "etcd",
            [
                str(self.binary),
                "etcd",
                "--name=node0",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=node0={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--listen-metrics-urls=",
            ],
        )
        wait_until(etcd, lambda: _http_ok(f"{client_url}/health"), timeout=self.ready_timeout)
        return client_url

    def _start_apiserver(self, ca: CertificateAuthority, etcd_url: str, port: int) -> None:
        pki = ca.pair.cert_path.parent
        serving = ca.issue_serving(
            pki,
            "apiserver",
            [
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        sa_key = write_service_account_key(pki / "sa.key")
        tokens = pki / "tokens.csv"
        tokens.write_text(f"{ADMIN_TOKEN},admin,admin,system:masters\n")
        apiserver = self.supervisor.start(
            "kube-apiserver",
            [
                str(self.binary),
                "kube-apiserver",
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={serving.cert_path}",
                f"--tls-private-key-file={serving.key_path}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--shutdown-delay-duration=0s",
                f"--cert-dir={pki}",
            ],
        )
        context = ssl.create_default_context(cafile=str(ca.pair.cert_path))
        wait_until(
            apiserver,
            lambda: _http_ok(f"{self.server}/readyz", context, ADMIN_TOKEN),
            timeout=self.ready_timeout,
            interval=0.5,
        )

    def _start_controller_manager(self, kubeconfig: Path) -> None:
        port = free_port()
        manager = self.supervisor.start(
            "kube-controller-manager",
            [
                str(self.binary),
                "kube-controller-manager",
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--controllers={_CONTROLLERS}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        wait_until(
            manager,
            lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", insecure),
            timeout=self.ready_timeout,
            interval=0.5,
        )
