"""The local environment the tests, `beatkeeper dev up` and the demo share.

`local_environment()` starts what is asked for (a control plane unless an
existing cluster's kubeconfig is given, a real node on it, and Redis), yields
where they are, and on exit stops exactly the processes it started and removes
its scratch state; the node's keeper takes back what the node changed on the
machine. Component logs are kept under the state directory so that a failing
test can point to them after the scratch state is gone. A local control plane
also gives out client-certificate identities (`Environment.user_kubeconfig`)
and keeps an audit log of ServiceAccounts and of those identities in
`cluster.AUDITED_GROUP` (`Environment.audit_log`, see `beatkeeper_devenv.cluster`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from beatkeeper_devenv.build import ensure_cluster_binary, ensure_coredns
from beatkeeper_devenv.cluster import LocalControlPlane
from beatkeeper_devenv.images import Built, ensure_images
from beatkeeper_devenv.node import (
    GATEWAY,
    NODE_NAME,
    NodeConfig,
    node_home,
    start_keeper,
    wait_node_ready,
)
from beatkeeper_devenv.processes import Supervisor
from beatkeeper_devenv.redis import start_redis
from beatkeeper_devenv.settings import DevSettings

Progress = Callable[[str], None]
UserKubeconfig = Callable[[str, str, tuple[str, ...]], Path]  # (file name, user, groups)
_KEPT_LOG_RUNS = 10


@dataclass(frozen=True)
class Environment:
    kubeconfig: Path
    redis_url: str | None
    log_dir: Path
    local_cluster: bool
    supervisor: Supervisor
    images: dict[str, Built] = field(default_factory=dict)  # imported into the node
    node: str | None = None  # the node's name, when one runs
    # A local control plane's: its audit log and a maker of client-certificate users.
    audit_log: Path | None = None
    user_kubeconfig: UserKubeconfig | None = None

    def kube_env(self) -> dict[str, str]:
        """os.environ for a child (kubectl, the operator) pointed at this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env


def _new_log_dir(state_dir: Path) -> Path:
    runs = state_dir / "logs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[:-_KEPT_LOG_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))


def _timed(progress: Progress, what: str, action: Callable[[], object]) -> None:
    started = time.monotonic()
    progress(f"starting {what}")
    action()
    progress(f"{what} ready in {time.monotonic() - started:.1f} s")


@contextmanager
def local_environment(
    settings: DevSettings,
    *,
    redis: bool = True,
    node: bool = False,
    kubeconfig: Path | None = None,
    external_kubeconfig: Path | None = None,
    extra_images: Sequence[tuple[str, Path, Sequence[str]]] = (),
    progress: Progress = lambda _message: None,
) -> Iterator[Environment]:
    """Start a control plane (or use `external_kubeconfig`), a node if asked, and Redis.

    `extra_images`: more images FROM the worker image for the node (name, context,
    files), as `beatkeeper_devenv.images.ensure_images` takes them.
    """
    if node and external_kubeconfig is not None:
        raise ValueError("a local node joins the local control plane, not an existing cluster")
    log_dir = _new_log_dir(settings.state_dir)
    supervisor = Supervisor(log_dir)
    scratch = Path(tempfile.mkdtemp(prefix="beatkeeper-"))
    images: dict[str, Built] = {}
    plane: LocalControlPlane | None = None
    try:
        if external_kubeconfig is not None:
            config_path = external_kubeconfig
        elif node:
            images = ensure_images(settings, progress, extra_images)
            plane = _start_with_node(
                settings, scratch, supervisor, kubeconfig, images=images, progress=progress
            )
        else:
            binary = ensure_cluster_binary(settings, progress)
            plane = LocalControlPlane(binary, scratch, supervisor)
            _timed(
                progress,
                "control plane (etcd, kube-apiserver, controller-manager)",
                lambda: plane.start(kubeconfig),
            )
        if plane is not None:
            assert plane.kubeconfig is not None
            config_path = plane.kubeconfig
        redis_url = None
        if redis:
            started = time.monotonic()
            _component, redis_url = start_redis(
                supervisor,
                scratch / "redis",
                settings.redis_server,
                pod_network=GATEWAY if node else None,
            )
            progress(f"redis ready in {time.monotonic() - started:.1f} s at {redis_url}")
        yield Environment(
            kubeconfig=config_path,
            redis_url=redis_url,
            log_dir=log_dir,
            local_cluster=external_kubeconfig is None,
            supervisor=supervisor,
            images=images,
            node=NODE_NAME if node else None,
            audit_log=plane.audit_log if plane is not None else None,
            user_kubeconfig=plane.user_kubeconfig if plane is not None else None,
        )
    finally:
        supervisor.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)
        if kubeconfig is not None and external_kubeconfig is None:
            kubeconfig.unlink(missing_ok=True)


def _start_with_node(
    settings: DevSettings,
    scratch: Path,
    supervisor: Supervisor,
    kubeconfig: Path | None,
    *,
    images: dict[str, Built],
    progress: Progress,
) -> LocalControlPlane:
    """The node's network first (the apiserver binds to it), then the control plane."""
    started = time.monotonic()
    binary = ensure_cluster_binary(settings, progress)
    plane = LocalControlPlane(binary, scratch, supervisor, address=GATEWAY)
    config_path = plane.prepare(kubeconfig)
    credentials = plane.node_credentials(NODE_NAME)
    assert plane.ca is not None
    config = NodeConfig(
        cluster_binary=str(binary),
        coredns_binary=str(ensure_coredns(settings, progress)),
        home=str(node_home(settings.cache_dir)),
        log_dir=str(supervisor.log_dir),
        apiserver=plane.server,
        ca_file=str(plane.ca.pair.cert_path),
        admin_kubeconfig=str(config_path),
        kubelet_kubeconfig=str(credentials.kubelet),
        scheduler_kubeconfig=str(credentials.scheduler),
        proxy_kubeconfig=str(credentials.proxy),
        dns_kubeconfig=str(credentials.dns),
        images=[built.as_import() for built in images.values()],
    )
    progress("starting the node's network and containerd (images imported as needed)")
    keeper = start_keeper(supervisor, config, scratch / "node.json")
    _timed(
        progress,
        f"control plane (etcd, kube-apiserver, controller-manager) on {GATEWAY}",
        lambda: plane.start(kubeconfig),
    )
    wait_node_ready(keeper)
    progress(
        f"node {NODE_NAME} Ready after {time.monotonic() - started:.1f} s "
        "(containerd, kubelet, kube-scheduler, kube-proxy, cluster DNS)"
    )
    return plane
