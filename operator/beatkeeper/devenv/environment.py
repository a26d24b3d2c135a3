"""The local environment the tests and `beatkeeper dev up` share.

`local_environment()` starts what is asked for (a control plane unless an
existing cluster's kubeconfig is given, and Redis), yields where they are, and
on exit stops exactly the processes it started and removes its scratch state.
Component logs are kept under the state directory so that a failing test can
point to them after the scratch state is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from beatkeeper.devenv.build import ensure_cluster_binary
from beatkeeper.devenv.cluster import LocalControlPlane
from beatkeeper.devenv.processes import Supervisor
from beatkeeper.devenv.redis import start_redis
from beatkeeper_core.settings import DevSettings

Progress = Callable[[str], None]
_KEPT_LOG_RUNS = 10


@dataclass(frozen=True)
class Environment:
    kubeconfig: Path
    redis_url: str | None
    log_dir: Path
    local_cluster: bool
    supervisor: Supervisor

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
    kubeconfig: Path | None = None,
    external_kubeconfig: Path | None = None,
    progress: Progress = lambda _message: None,
) -> Iterator[Environment]:
    """Start a control plane (or use `external_kubeconfig`) and, if asked, Redis."""
    log_dir = _new_log_dir(settings.state_dir)
    supervisor = Supervisor(log_dir)
    scratch = Path(tempfile.mkdtemp(prefix="beatkeeper-"))
    try:
        if external_kubeconfig is None:
            binary = ensure_cluster_binary(settings, progress)
            plane = LocalControlPlane(binary, scratch, supervisor)
            _timed(
                progress,
                "control plane (etcd, kube-apiserver, controller-manager)",
                lambda: plane.start(kubeconfig),
            )
            assert plane.kubeconfig is not None
            config_path = plane.kubeconfig
        else:
            config_path = external_kubeconfig
        redis_url = None
        if redis:
            started = time.monotonic()
            _component, redis_url = start_redis(
                supervisor, scratch / "redis", settings.redis_server
            )
            progress(f"redis ready in {time.monotonic() - started:.1f} s at {redis_url}")
        yield Environment(
            kubeconfig=config_path,
            redis_url=redis_url,
            log_dir=log_dir,
            local_cluster=external_kubeconfig is None,
            supervisor=supervisor,
        )
    finally:
        supervisor.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)
        if kubeconfig is not None and external_kubeconfig is None:
            kubeconfig.unlink(missing_ok=True)
