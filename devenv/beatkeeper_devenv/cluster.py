"""A real Kubernetes control plane: etcd, kube-apiserver, controller-manager.

Alone it serves on 127.0.0.1 and Pods stay Pending. With a node
(`beatkeeper_devenv.node`), the apiserver binds and advertises the pod network's
gateway instead, so pods reach it through the `kubernetes` Service with real
ServiceAccount tokens; the controller-manager then also runs the node, endpoint,
volume and StatefulSet controllers, and the node's parts get client
certificates from the same CA (kubelet as `system:node:NAME`, checked by the
Node authorizer; the apiserver reaches the kubelet with a client certificate of
its own). Start order is etcd -> kube-apiserver -> kube-controller-manager;
the supervisor stops them the other way.

The apiserver writes an audit log (level Metadata: who did what to which
resource, no bodies) of the requests of ServiceAccounts and of the group
`AUDITED_GROUP` only, so the controllers', the node's and the admin's traffic
never reaches it: the end-to-end tier reads it to measure which grants the
operator really uses (tests/e2e/test_rbac_least_privilege.py). It lives in the
control plane's work directory, goes with it, and rotates at 100 MB.
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

from beatkeeper.pki import CertificateAuthority, KeyPair, write_service_account_key
from beatkeeper_devenv.processes import Supervisor, wait_until

ADMIN_TOKEN = "admin-token"  # noqa: S105 - a local, loopback-only test cluster
SERVICE_CIDR = "10.0.0.0/24"
# Client-certificate users in this group (besides ServiceAccounts) are audited.
AUDITED_GROUP = "beatkeeper:audited"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # ResponseStarted (a watch's opening) and ResponseComplete: each request at least once.
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": [AUDITED_GROUP, "system:serviceaccounts"]},
        {"level": "None"},
    ],
}
_AUDIT_LOG_MAX_MB, _AUDIT_LOG_BACKUPS = 100, 4
_CONTROLLERS = [
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
]
# What running pods need: the node's taints lifted, Services' endpoints, the bundled
# Redis's StatefulSet and its volume claim, PodDisruptionBudget status.
_NODE_CONTROLLERS = [
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "statefulset-controller",
    "disruption-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
]


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


def write_kubeconfig(
    path: Path, server: str, ca_pem: bytes, token: str | None = None, client: KeyPair | None = None
) -> Path:
    """A kubeconfig for `server` with a bearer token or a client certificate."""
    user: dict[str, str] = {"token": token} if token else {}
    if client is not None:
        user = {
            "client-certificate-data": base64.b64encode(client.cert_path.read_bytes()).decode(),
            "client-key-data": base64.b64encode(client.key_path.read_bytes()).decode(),
        }
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
        "users": [{"name": "admin", "user": user}],
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


@dataclass(frozen=True)
class NodeCredentials:
    """Kubeconfigs of the node's parts, each with its own client certificate."""

    kubelet: Path
    scheduler: Path
    proxy: Path
    dns: Path


@dataclass
class LocalControlPlane:
    """Starts the three components under `workdir` with the binary from build.py.

    `address`: where the apiserver binds and what it advertises (127.0.0.1, or the
    pod network's gateway when a node runs).
    """

    binary: Path
    workdir: Path
    supervisor: Supervisor
    ready_timeout: float = 180.0
    address: str = "127.0.0.1"
    server: str = ""
    kubeconfig: Path | None = None
    ca: CertificateAuthority | None = None
    port: int = 0

    @property
    def log_dir(self) -> Path:
        return self.supervisor.log_dir

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def with_node(self) -> bool:
        return self.address != "127.0.0.1"

    @property
    def audit_log(self) -> Path:
        """The audit log; rotated files sit beside it as audit-TIMESTAMP.log."""
        return self.workdir / "audit" / "audit.log"

    def prepare(self, kubeconfig: Path | None = None) -> Path:
        """Make the CA and the admin kubeconfig (before anything starts)."""
        self.ca = CertificateAuthority.create(self.pki)
        self.port = free_port()
        self.server = f"https://{self.address}:{self.port}"
        self.kubeconfig = write_kubeconfig(
            kubeconfig or self.workdir / "kubeconfig", self.server, self.ca.cert_pem, ADMIN_TOKEN
        )
        return self.kubeconfig

    def user_kubeconfig(
        self, name: str, user: str, groups: tuple[str, ...] = (), folder: str = "users"
    ) -> Path:
        """A kubeconfig for a client-certificate identity (user from CN, groups from O)."""
        assert self.ca is not None, "prepare() first"
        directory = self.pki / folder
        pair = self.ca.issue_client(directory, name, user, groups)
        return write_kubeconfig(
            directory / f"{name}.kubeconfig", self.server, self.ca.cert_pem, client=pair
        )

    def node_credentials(self, node_name: str) -> NodeCredentials:
        def kubeconfig(name: str, user: str, groups: tuple[str, ...] = ()) -> Path:
            return self.user_kubeconfig(name, user, groups, folder="node")

        return NodeCredentials(
            kubelet=kubeconfig("kubelet", f"system:node:{node_name}", ("system:nodes",)),
            scheduler=kubeconfig("scheduler", "system:kube-scheduler"),
            proxy=kubeconfig("kube-proxy", "system:kube-proxy"),
            dns=kubeconfig("cluster-dns", "system:beatkeeper:cluster-dns"),
        )

    def start(self, kubeconfig: Path | None = None) -> Path:
        if self.ca is None:
            self.prepare(kubeconfig)
        assert self.ca is not None
        assert self.kubeconfig is not None
        etcd_url = self._start_etcd()
        self._start_apiserver(self.ca, etcd_url, self.port)
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

    def _node_flags(self, ca: CertificateAuthority) -> list[str]:
        if not self.with_node:
            return ["--endpoint-reconciler-type=none"]
        # The apiserver's identity towards the kubelet (logs, exec, port-forward).
        client = ca.issue_client(
            self.pki,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            ("system:masters",),
        )
        return [
            "--endpoint-reconciler-type=lease",
            f"--kubelet-client-certificate={client.cert_path}",
            f"--kubelet-client-key={client.key_path}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _start_apiserver(self, ca: CertificateAuthority, etcd_url: str, port: int) -> None:
        pki = ca.pair.cert_path.parent
        hosts = [
            "127.0.0.1",
            "localhost",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        if self.with_node:
            hosts.append(self.address)
        serving = ca.issue_serving(pki, "apiserver", hosts)
        sa_key = write_service_account_key(pki / "sa.key")
        tokens = pki / "tokens.csv"
        tokens.write_text(f"{ADMIN_TOKEN},admin,admin,system:masters\n")
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        policy = self.audit_log.parent / "policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
        apiserver = self.supervisor.start(
            "kube-apiserver",
            [
                str(self.binary),
                "kube-apiserver",
                f"--etcd-servers={etcd_url}",
                f"--bind-address={self.address}",
                f"--secure-port={port}",
                f"--advertise-address={self.address}",
                f"--tls-cert-file={serving.cert_path}",
                f"--tls-private-key-file={serving.key_path}",
                f"--client-ca-file={ca.pair.cert_path}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                "--shutdown-delay-duration=0s",
                f"--cert-dir={pki}",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                f"--audit-log-maxsize={_AUDIT_LOG_MAX_MB}",
                f"--audit-log-maxbackup={_AUDIT_LOG_BACKUPS}",
                *self._node_flags(ca),
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
        assert self.ca is not None
        port = free_port()
        controllers = _CONTROLLERS + (_NODE_CONTROLLERS if self.with_node else [])
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
                f"--controllers={','.join(controllers)}",
                f"--root-ca-file={self.ca.pair.cert_path}",
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
