"""A real node on this machine: containerd, kubelet, kube-scheduler, kube-proxy, cluster DNS.

The recipe:
containerd and runc from Debian, kubelet, scheduler and kube-proxy from the
control plane's own binary, CoreDNS built from its Go module, images imported
from local archives and never pulled. `python -m beatkeeper_devenv.node
--config FILE` is the node's keeper: one process that owns every part of the
node and, on SIGTERM (also the parent-death signal when its launcher is
SIGKILLed), takes all of it down again. `LocalNode` is the launcher's side.

What the keeper changes on the machine, and takes back on the way out:
- a bridge (`bk0`, 10.88.0.1/16) with a route for the Service range, and
  iptables rules that drop anything the pods send beyond the bridge (no
  masquerade either): pods reach the host and each other, nothing else;
- containerd's state, the kubelet's root, pod logs, volumes: under one run
  folder, removed at the end (images stay in containerd's root in the cache);
- mounts under that folder, the pods' network namespaces, kube-proxy's chains,
  the pods' cgroups (under `/beatkeeper-node`), the sysctls kubelet and the CNI
  bridge set (restored to what they were).

Only one node runs on a machine (kube-proxy's chains and the bridge are
machine-wide): the keeper holds a lock file for its whole life, and clears what
a keeper killed without a chance to clean left behind before it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from beatkeeper_devenv.cluster import SERVICE_CIDR, free_port
from beatkeeper_devenv.processes import Component, Supervisor, wait_until
from beatkeeper_devenv.provisioner import PROVISIONER, run_provisioner
from beatkeeper_devenv.settings import DevSettings

NETWORK_READY = "node: network ready"
NODE_READY = "node: ready"
BRIDGE = "bk0"
GATEWAY = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
NODE_NAME = "beatkeeper-node"
CGROUP_ROOT = "beatkeeper-node"
KUBELET_PORT = 10250
STORAGE_CLASS = "beatkeeper-local"
CLOSED_PORT = "http://127.0.0.1:9"  # every registry and proxy: a pull fails at once
_RULE_COMMENT = "beatkeeper-node"
# What kubelet (setupKernelTunables), the CNI bridge (isGateway) and kube-proxy may change.
_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)


class NodeFailed(RuntimeError):
    """The node could not be set up; the message says what failed."""


@dataclass(frozen=True)
class NodeConfig:
    """What the launcher tells the keeper: binaries, credentials, where things go."""

    cluster_binary: str
    coredns_binary: str
    home: str  # cache_dir/node: the lock, containerd's root (images), the run folder
    log_dir: str
    apiserver: str  # https://GATEWAY:PORT
    ca_file: str
    admin_kubeconfig: str
    kubelet_kubeconfig: str
    scheduler_kubeconfig: str
    proxy_kubeconfig: str
    dns_kubeconfig: str
    images: list[dict[str, str]] = field(default_factory=list)  # {archive, ref, inputs}

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> NodeConfig:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class NodePaths:
    """Every place on disk the node uses, from its home folder."""

    home: Path

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def lock(self) -> Path:
        return self.home / "lock"

    @property
    def sysctls(self) -> Path:
        return self.home / "sysctls.json"

    @property
    def containerd_root(self) -> Path:
        return self.home / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd"

    @property
    def socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def cni_conf(self) -> Path:
        return self.run / "cni"

    @property
    def kubelet(self) -> Path:
        return self.run / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.run / "pod-logs"

    @property
    def volumes(self) -> Path:
        return self.run / "volumes"


def _run(*argv: str, check: bool = True) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NodeFailed(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def _ok(*argv: str) -> bool:
    return subprocess.run(list(argv), capture_output=True, check=False).returncode == 0


# The machine-wide parts: network, sysctls, cgroups, mounts, network namespaces.


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def save_sysctls(paths: NodePaths) -> None:
    """Remember the values before the node changes them (kept if a crash left them)."""
    if paths.sysctls.exists():
        return
    values = {}
    for key in _SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = _sysctl_path(key).read_text().strip()
    paths.sysctls.write_text(json.dumps(values))


def restore_sysctls(paths: NodePaths) -> None:
    if not paths.sysctls.exists():
        return
    for key, value in json.loads(paths.sysctls.read_text()).items():
        with contextlib.suppress(OSError):
            _sysctl_path(key).write_text(value)
    paths.sysctls.unlink()


def _iptables_rules() -> list[tuple[str, ...]]:
    """The node's own filter rules: intra-bridge traffic passes, anything else leaving drops."""
    comment = ("-m", "comment", "--comment", _RULE_COMMENT)
    return [
        ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, *comment, "-j", "ACCEPT"),
        ("FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, *comment, "-j", "DROP"),
    ]


# A Linux bridge without an address of its own takes the lowest MAC of its ports, so
# the gateway's MAC changes when a pod's veth leaves, and every other pod's ARP entry
# for the gateway points nowhere until it expires (seen: a pod cut off from Redis on
# the host for 50 s after another pod was deleted). A fixed, locally administered
# address (10.88.0.1 in its last four bytes) keeps it.
BRIDGE_MAC = "02:42:0a:58:00:01"


def network_up() -> None:
    _run("ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
    prefix = ipaddress.ip_network(POD_CIDR).prefixlen
    _run("ip", "addr", "add", f"{GATEWAY}/{prefix}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # Service addresses never follow the default route out of the machine.
    _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", GATEWAY)
    for rule in reversed(_iptables_rules()):
        _run("iptables", "-I", rule[0], "1", *rule[1:])


def _drop_rules() -> None:
    for rule in _iptables_rules():
        while _ok("iptables", "-C", *rule):
            _run("iptables", "-D", *rule)


def _drop_chains(prefixes: tuple[str, ...] = ("KUBE-", "CNI-")) -> None:
    """Chains kubelet (canaries, KUBE-FIREWALL), kube-proxy and CNI portmap made, v4 and v6.

    kube-proxy's own `--cleanup` runs first; this takes what it leaves (kubelet's).
    """
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listing = _run(tool, "-t", table, "-S", check=False).splitlines()
            chains = [line.split()[1] for line in listing if line.startswith("-N ")]
            ours = [chain for chain in chains if chain.startswith(prefixes)]
            for line in listing:
                words = line.split()
                jumps = "-j" in words and words[words.index("-j") + 1] in ours
                if line.startswith("-A ") and jumps and words[1] not in ours:
                    _run(tool, "-t", table, "-D", *words[1:], check=False)
            for chain in ours:
                _run(tool, "-t", table, "-F", chain, check=False)
            for chain in ours:
                _run(tool, "-t", table, "-X", chain, check=False)


def network_down() -> None:
    _drop_rules()
    _drop_chains()
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "delete", BRIDGE, check=False)


def _mounts_under(root: Path) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == str(root) or mount_point.startswith(f"{root}/"):
            found.append(mount_point)
    return found


def unmount_under(root: Path) -> None:
    """Deepest first, lazily: a busy mount still goes once its last user exits."""
    for mount_point in sorted(set(_mounts_under(root)), key=len, reverse=True):
        _run("umount", "-l", mount_point, check=False)


def pod_netns() -> list[str]:
    """Network namespaces holding an address of the pod range: the node's pods' ones."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return []
    pods = ipaddress.ip_network(POD_CIDR)
    found = []
    for entry in sorted(netns_dir.iterdir()):
        if not entry.name.startswith("cni-"):
            continue
        try:
            links = json.loads(
                _run("ip", "-n", entry.name, "-j", "-4", "addr", check=False) or "[]"
            )
        except ValueError:
            continue
        addresses = [a.get("local", "") for link in links for a in link.get("addr_info", [])]
        if any(a and ipaddress.ip_address(a) in pods for a in addresses):
            found.append(entry.name)
    return found


def remove_netns(names: Sequence[str]) -> None:
    for name in names:
        path = Path("/run/netns") / name
        _run("umount", "-l", str(path), check=False)
        with contextlib.suppress(OSError):
            path.unlink()


def _cgroup_mounts() -> list[Path]:
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            roots.append(Path(left.split()[4]))
    return roots


def node_cgroups() -> list[Path]:
    """The node's cgroup folders in every hierarchy, deepest first."""
    found: list[Path] = []
    for root in _cgroup_mounts():
        top = root / CGROUP_ROOT
        if top.is_dir():
            found += [Path(d) for d, _subdirs, _files in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def kill_cgroup_processes() -> int:
    """SIGKILL every process still in a node cgroup (containers whose shim is gone)."""
    pids: set[int] = set()
    for folder in node_cgroups():
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (folder / "cgroup.procs").read_text().split()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def remove_cgroups() -> None:
    for _attempt in range(50):
        left = node_cgroups()
        for folder in left:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if not node_cgroups():
            return
        kill_cgroup_processes()
        time.sleep(0.1)


def make_cgroup_root() -> None:
    """kubelet's --cgroup-root must exist in every hierarchy it uses."""
    for root in _cgroup_mounts():
        with contextlib.suppress(OSError):
            (root / CGROUP_ROOT).mkdir(exist_ok=True)


def shim_pids(socket: Path) -> list[int]:
    """containerd-shim processes started by this node's containerd."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in argv:
            found.append(int(entry.name))
    return found


def remove_container_log_links(pod_logs: Path) -> None:
    """kubelet links each container's log into /var/log/containers."""
    links = Path("/var/log/containers")
    if not links.is_dir():
        return
    for link in links.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(f"{pod_logs}/"):
                link.unlink()


# containerd


def ctr(paths: NodePaths, *args: str, check: bool = True) -> str:
    return _run("ctr", f"--address={paths.socket}", "--namespace=k8s.io", *args, check=check)


def _running_tasks(paths: NodePaths) -> list[str]:
    # `ctr tasks list`: a header, then TASK PID STATUS per line.
    lines = ctr(paths, "tasks", "list", check=False).splitlines()[1:]
    return [words[0] for words in map(str.split, lines) if words and words[-1] == "RUNNING"]


def remove_containers(paths: NodePaths) -> None:
    """Every task and container of the k8s.io namespace (pods and their sandboxes)."""
    for task in _running_tasks(paths):
        ctr(paths, "tasks", "kill", "--all", "--signal=SIGKILL", task, check=False)
    deadline = time.monotonic() + 15
    while _running_tasks(paths) and time.monotonic() < deadline:
        time.sleep(0.2)
    for task in ctr(paths, "tasks", "list", "--quiet", check=False).split():
        ctr(paths, "tasks", "delete", "--force", task, check=False)
    for container in ctr(paths, "containers", "list", "--quiet", check=False).split():
        ctr(paths, "containers", "delete", container, check=False)


def containerd_config(paths: NodePaths) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
[grpc]
  address = "{paths.socket}"
[ttrpc]
  address = "{paths.socket}.ttrpc"
[metrics]
  address = ""
[{cri}]
  sandbox_image = "localhost/pause:local"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{paths.cni_conf}"
  [{cri}.registry]
    config_path = "{paths.run / "registry-hosts"}"
"""


def registry_hosts(paths: NodePaths) -> None:
    """Every registry resolves to a closed loopback port: a pull fails at once, locally."""
    folder = paths.run / "registry-hosts" / "_default"
    folder.mkdir(parents=True, exist_ok=True)
    host = f'[host."{CLOSED_PORT}"]\n  capabilities = ["pull", "resolve"]\n'
    (folder / "hosts.toml").write_text(f'server = "{CLOSED_PORT}"\n\n{host}')


def cni_conflist(paths: NodePaths) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "beatkeeper",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                    # No default route: an address beyond the machine is unreachable at once.
                    "routes": [{"dst": SERVICE_CIDR}],
                    "dataDir": str(paths.run / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


# Kubernetes parts


def kubelet_config(paths: NodePaths, config: NodeConfig, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The pods' network: the apiserver reaches it for logs, exec and port-forward.
        "address": GATEWAY,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": config.ca_file},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "failSwapOn": False,
        "podLogsDir": str(paths.pod_logs),
        "clusterDNS": [GATEWAY],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(paths.run / "resolv.conf"),
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        # Images are imported, never pulled: garbage collection must not delete them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "maxPods": 110,
    }


def proxy_config(config: NodeConfig, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{GATEWAY}/32"],
        "hostnameOverride": NODE_NAME,
        "conntrack": {"maxPerCore": 0, "min": 0},
        "clientConnection": {"kubeconfig": config.proxy_kubeconfig},
    }


def corefile(config: NodeConfig, health_port: int, ready_port: int) -> str:
    # No `forward`: names outside the cluster domain are refused, never sent anywhere.
    return f""".:53 {{
    bind {GATEWAY}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {config.dns_kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""


DNS_RBAC = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "beatkeeper:cluster-dns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["services", "endpoints", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "beatkeeper:cluster-dns"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "beatkeeper:cluster-dns",
        },
        "subjects": [
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "User",
                "name": "system:beatkeeper:cluster-dns",
            }
        ],
    },
]

STORAGE = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": STORAGE_CLASS,
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": PROVISIONER,
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Keeper:
    """The keeper's work: set the node up, hold it, take it down."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.paths = NodePaths(Path(config.home))
        self.supervisor = Supervisor(Path(config.log_dir))
        self.components: dict[str, Component] = {}
        self.stop_provisioner = threading.Event()
        self.provisioner: threading.Thread | None = None

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        argv = ["kubectl", f"--kubeconfig={self.config.admin_kubeconfig}", *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise NodeFailed(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    # Up

    def start_network(self) -> None:
        clean_machine(self.paths, self.config.cluster_binary)
        self.paths.run.mkdir(parents=True)
        for folder in (self.paths.cni_conf, self.paths.kubelet, self.paths.volumes):
            folder.mkdir(parents=True)
        save_sysctls(self.paths)
        network_up()
        make_cgroup_root()

    def start_containerd(self) -> None:
        self.paths.containerd_state.mkdir(parents=True, exist_ok=True)
        self.paths.containerd_root.mkdir(parents=True, exist_ok=True)
        conf = self.paths.run / "containerd.toml"
        conf.write_text(containerd_config(self.paths))
        registry_hosts(self.paths)
        (self.paths.cni_conf / "10-beatkeeper.conflist").write_text(
            json.dumps(cni_conflist(self.paths), indent=2)
        )
        env = dict(os.environ)
        # Belt and braces with the registry hosts: any HTTP(S) a pull makes goes nowhere.
        env.update(HTTP_PROXY=CLOSED_PORT, HTTPS_PROXY=CLOSED_PORT, NO_PROXY="")
        component = self.supervisor.start("containerd", ["containerd", f"--config={conf}"], env=env)
        self.components["containerd"] = component
        wait_until(component, self.paths.socket.exists, timeout=30)
        socket = f"--address={self.paths.socket}"
        wait_until(component, lambda: _ok("ctr", socket, "version"), timeout=30)
        # Containers of an earlier node that did not stop cleanly (images stay).
        remove_containers(self.paths)

    def import_images(self, images: Sequence[dict[str, str]]) -> list[str]:
        return import_images(self.paths, images)

    def wait_for_apiserver(self, timeout: float = 180) -> None:
        context = ssl.create_default_context(cafile=self.config.ca_file)
        deadline = time.monotonic() + timeout
        while not _http_ok(f"{self.config.apiserver}/livez", context):
            if time.monotonic() > deadline:
                raise NodeFailed(f"the apiserver at {self.config.apiserver} never answered")
            time.sleep(0.5)
        while self.kubectl("get", "--raw=/readyz", check=False).strip() != "ok":
            if time.monotonic() > deadline:
                raise NodeFailed(f"the apiserver at {self.config.apiserver} never became ready")
            time.sleep(0.5)

    def start_kubernetes_parts(self) -> None:
        objects = {"apiVersion": "v1", "kind": "List", "items": [*DNS_RBAC, STORAGE]}
        self.kubectl("apply", "-f", "-", stdin=json.dumps(objects))
        self.start_dns()
        self.start_kubelet()
        self.start_scheduler()
        self.start_proxy()
        self.start_provisioner()

    def _start(self, name: str, argv: Sequence[str]) -> Component:
        component = self.supervisor.start(name, argv)
        self.components[name] = component
        return component

    def start_dns(self) -> None:
        health, ready = free_port(), free_port()
        path = self.paths.run / "Corefile"
        path.write_text(corefile(self.config, health, ready))
        dns = self._start("coredns", [self.config.coredns_binary, f"-conf={path}"])
        wait_until(dns, lambda: _http_ok(f"http://127.0.0.1:{health}/health"), timeout=60)
        self.dns_ready_url = f"http://127.0.0.1:{ready}/ready"

    def start_kubelet(self) -> None:
        port = free_port()
        (self.paths.run / "resolv.conf").write_text(f"nameserver {GATEWAY}\n")
        conf = self.paths.run / "kubelet.yaml"
        conf.write_text(yaml.safe_dump(kubelet_config(self.paths, self.config, port)))
        kubelet = self._start(
            "kubelet",
            [
                self.config.cluster_binary,
                "kubelet",
                f"--config={conf}",
                f"--kubeconfig={self.config.kubelet_kubeconfig}",
                f"--root-dir={self.paths.kubelet / 'root'}",
                f"--cert-dir={self.paths.kubelet / 'pki'}",
                f"--node-ip={GATEWAY}",
                f"--hostname-override={NODE_NAME}",
                "--node-labels=beatkeeper.dev/local-node=true",
            ],
        )
        wait_until(kubelet, lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90)

    def start_scheduler(self) -> None:
        kubeconfig = self.config.scheduler_kubeconfig
        self._start(
            "kube-scheduler",
            [
                self.config.cluster_binary,
                "kube-scheduler",
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )

    def start_proxy(self) -> None:
        health = free_port()
        conf = self.paths.run / "kube-proxy.yaml"
        conf.write_text(yaml.safe_dump(proxy_config(self.config, health, free_port())))
        proxy = self._start(
            "kube-proxy", [self.config.cluster_binary, "kube-proxy", f"--config={conf}"]
        )
        wait_until(proxy, lambda: _http_ok(f"http://127.0.0.1:{health}/healthz"), timeout=60)

    def start_provisioner(self) -> None:
        self.provisioner = threading.Thread(
            target=run_provisioner,
            args=(self.config.admin_kubeconfig, self.paths.volumes, self.stop_provisioner),
            kwargs={"storage_class": STORAGE_CLASS, "node": NODE_NAME},
            name="provisioner",
            daemon=True,
        )
        self.provisioner.start()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not (self._node_ready() and _http_ok(self.dns_ready_url)):
            for component in self.components.values():
                if not component.running():
                    raise component.failure(f"exited with code {component.popen.returncode}")
            if time.monotonic() > deadline:
                raise NodeFailed(f"node {NODE_NAME} was not Ready within {timeout:.0f} s")
            time.sleep(0.5)

    def _node_ready(self) -> bool:
        out = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if not out:
            return False
        node = json.loads(out)
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        return ready and not node.get("spec", {}).get("taints")

    # Down

    def stop(self) -> None:
        self.stop_provisioner.set()
        for name in ("kube-scheduler", "kubelet", "coredns", "kube-proxy"):
            component = self.components.pop(name, None)
            if component is not None:
                self.supervisor.stop(component, grace=10)
        if "containerd" in self.components and self.components["containerd"].running():
            remove_containers(self.paths)
        for pid in shim_pids(self.paths.socket):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        component = self.components.pop("containerd", None)
        if component is not None:
            self.supervisor.stop(component, grace=10)
        self.supervisor.stop_all()
        clean_machine(self.paths, cluster_binary=self.config.cluster_binary)


def clean_machine(paths: NodePaths, cluster_binary: str | None = None) -> None:
    """Take back everything a node changes on the machine; safe to repeat."""
    for pid in shim_pids(paths.socket):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    kill_cgroup_processes()
    unmount_under(paths.run)
    unmount_under(paths.containerd_root)
    remove_netns(pod_netns())
    if cluster_binary is not None and Path(cluster_binary).exists():
        # kube-proxy's own cleanup knows every chain it made (iptables, ipvs, nftables).
        _run(cluster_binary, "kube-proxy", "--cleanup", check=False)
    network_down()
    remove_cgroups()
    remove_container_log_links(paths.pod_logs)
    restore_sysctls(paths)
    shutil.rmtree(paths.run, ignore_errors=True)


def import_images(paths: NodePaths, images: Sequence[dict[str, str]]) -> list[str]:
    """Import the archives whose inputs containerd does not hold yet; returns their refs."""
    imported = []
    for image in images:
        label = ctr(paths, "images", "list", f"name=={image['ref']}", check=False)
        if image["inputs"] in label:
            continue
        ctr(paths, "images", "import", image["archive"])
        ctr(paths, "images", "label", image["ref"], f"beatkeeper.dev/inputs={image['inputs']}")
        imported.append(image["ref"])
    return imported


@contextlib.contextmanager
def node_lock(paths: NodePaths) -> Iterator[None]:
    paths.home.mkdir(parents=True, exist_ok=True)
    with paths.lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            raise NodeFailed(
                f"a node already runs on this machine (keeper pid {owner}): one node per "
                "machine, since the bridge and kube-proxy's chains are machine-wide"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def keep(config: NodeConfig) -> int:
    """Set the node up, report each stage on stdout, hold it until SIGTERM, take it down."""
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    keeper = Keeper(config)
    paths = keeper.paths
    with node_lock(paths):
        try:
            try:
                keeper.start_network()
                print(NETWORK_READY, flush=True)
                keeper.start_containerd()
                imported = keeper.import_images(config.images)
                print(f"node: images imported: {', '.join(imported) or 'none new'}", flush=True)
                keeper.wait_for_apiserver()
                keeper.start_kubernetes_parts()
                keeper.wait_ready()
                print(NODE_READY, flush=True)
                threading.Event().wait()
            except _Stop as stop:
                print(f"node: {stop}: stopping", flush=True)
            except Exception as error:
                print(f"node: failed: {error}", flush=True)
                return 1
            return 0
        finally:
            # A second signal must not cut the teardown short.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            keeper.stop()
            print("node: stopped; nothing of the node is left", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beatkeeper_devenv.node")
    parser.add_argument("--config", type=Path, required=True, help="NodeConfig JSON file")
    args = parser.parse_args(argv)
    return keep(NodeConfig.read(args.config))


def node_home(cache_dir: Path) -> Path:
    return cache_dir / "node"


def running_node(settings: DevSettings) -> NodePaths | None:
    """The paths of the node that runs on this machine now, if one does."""
    paths = NodePaths(node_home(settings.cache_dir))
    if not paths.socket.exists() or not paths.lock.exists():
        return None
    with paths.lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return paths
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def start_keeper(supervisor: Supervisor, config: NodeConfig, config_path: Path) -> Component:
    """Start the keeper and wait until its network is up (the apiserver binds to it)."""
    config.write(config_path)
    component = supervisor.start(
        "node", [sys.executable, "-m", "beatkeeper_devenv.node", f"--config={config_path}"]
    )
    component.stop_grace = 90.0  # it kills containers and unmounts before it exits
    wait_until(component, lambda: NETWORK_READY in component.log_path.read_text(), timeout=60)
    return component


def wait_node_ready(component: Component, timeout: float = 300) -> None:
    wait_until(component, lambda: NODE_READY in component.log_path.read_text(), timeout=timeout)


if __name__ == "__main__":
    raise SystemExit(main())
