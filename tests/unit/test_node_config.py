"""The node's and the image builds' pure parts: configs that keep pods on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beatkeeper_devenv import images, node
from beatkeeper_devenv.node import NodeConfig, NodePaths


def config(tmp_path: Path) -> NodeConfig:
    return NodeConfig(
        cluster_binary="/bin/cluster",
        coredns_binary="/bin/coredns",
        home=str(tmp_path / "node"),
        log_dir=str(tmp_path / "logs"),
        apiserver="https://10.88.0.1:6443",
        ca_file="/pki/ca.crt",
        admin_kubeconfig="/pki/admin",
        kubelet_kubeconfig="/pki/kubelet",
        scheduler_kubeconfig="/pki/scheduler",
        proxy_kubeconfig="/pki/proxy",
        dns_kubeconfig="/pki/dns",
    )


def test_pods_get_no_default_route_and_no_masquerade(tmp_path: Path) -> None:
    bridge = node.cni_conflist(NodePaths(tmp_path))["plugins"][0]
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["routes"] == [{"dst": node.SERVICE_CIDR}]
    assert str(tmp_path) in bridge["ipam"]["dataDir"]


def test_every_registry_is_a_closed_loopback_port(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    node.registry_hosts(paths)
    hosts = (paths.run / "registry-hosts" / "_default" / "hosts.toml").read_text()
    assert 'server = "http://127.0.0.1:9"' in hosts
    assert f'config_path = "{paths.run / "registry-hosts"}"' in node.containerd_config(paths)
    assert 'sandbox_image = "localhost/pause:local"' in node.containerd_config(paths)


def test_kubelet_authenticates_and_authorizes_every_caller(tmp_path: Path) -> None:
    kubelet = node.kubelet_config(NodePaths(tmp_path), config(tmp_path), healthz_port=1234)
    assert kubelet["authentication"]["anonymous"] == {"enabled": False}
    assert kubelet["authentication"]["webhook"] == {"enabled": True}
    assert kubelet["authentication"]["x509"]["clientCAFile"] == "/pki/ca.crt"
    assert kubelet["authorization"] == {"mode": "Webhook"}
    assert kubelet["address"] == node.GATEWAY
    assert kubelet["healthzBindAddress"] == "127.0.0.1"
    assert kubelet["cgroupRoot"] == f"/{node.CGROUP_ROOT}"
    assert kubelet["imageGCHighThresholdPercent"] == 100  # imported images are never collected
    assert kubelet["clusterDNS"] == [node.GATEWAY]


def test_cluster_dns_answers_for_the_cluster_and_forwards_nowhere(tmp_path: Path) -> None:
    corefile = node.corefile(config(tmp_path), health_port=1, ready_port=2)
    assert f"bind {node.GATEWAY}" in corefile
    assert f"kubernetes {node.CLUSTER_DOMAIN}" in corefile
    assert "forward" not in corefile


def test_kube_proxy_binds_loopback_and_serves_node_ports_on_the_bridge(tmp_path: Path) -> None:
    proxy = node.proxy_config(config(tmp_path), healthz_port=1, metrics_port=2)
    assert proxy["nodePortAddresses"] == [f"{node.GATEWAY}/32"]
    assert proxy["healthzBindAddress"].startswith("127.0.0.1:")
    assert proxy["conntrack"] == {"maxPerCore": 0, "min": 0}


def test_the_node_config_round_trips_through_its_file(tmp_path: Path) -> None:
    original = config(tmp_path)
    written = original.write(tmp_path / "node.json")
    assert NodeConfig.read(written) == original
    assert json.loads(written.read_text())["apiserver"] == "https://10.88.0.1:6443"


def test_drop_rules_are_the_only_way_out_of_the_bridge() -> None:
    rules = node._iptables_rules()
    assert [rule[-1] for rule in rules] == ["ACCEPT", "DROP"]
    assert rules[1][:5] == ("FORWARD", "-i", node.BRIDGE, "!", "-o")


def test_the_mirror_comes_from_the_machines_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
    )
    assert images.debian_mirror(tmp_path) == "http://mirror.example/debian"
    legacy = tmp_path / "legacy"
    (legacy / "sources.list.d").mkdir(parents=True)
    (legacy / "sources.list").write_text(
        "deb [arch=amd64] http://old.example/debian bookworm main\n"
    )
    assert images.debian_mirror(legacy) == "http://old.example/debian"
    with pytest.raises(images.ImageBuildFailed, match="no apt source"):
        images.debian_mirror(tmp_path / "legacy" / "sources.list.d")


def test_versions_are_read_from_dpkg_status(tmp_path: Path) -> None:
    status = tmp_path / "var" / "lib" / "dpkg" / "status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: python3.11\nStatus: install ok installed\nVersion: 3.11.2-6+deb12u6\n\n"
        "Package: redis-server\nStatus: install ok installed\nVersion: 5:7.0.15-1~deb12u10\n"
    )
    assert images._facts(tmp_path) == {"python": "3.11.2", "redis": "7.0.15"}


def test_short_image_names_are_the_ones_the_runtime_resolves() -> None:
    assert (
        images.image_ref("beatkeeper-worker", "0.1.0")
        == "docker.io/library/beatkeeper-worker:0.1.0"
    )
    repo = Path(__file__).resolve().parents[2]
    assert images.app_version(repo) == "0.1.0"
