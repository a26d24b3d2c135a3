"""The `beatkeeper` console script: `operator`, `beat`, `runs`, `validate`, and the local
environment's `dev up` and `demo`.

Each command imports its program when it runs, and reads its own settings: the operator
image (operator, beat, core) has no devenv, and `beatkeeper dev up` says how to get it.
The worker has its own console script, `beatkeeper-worker` (the worker image's entry point).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from beatkeeper_devenv.settings import DevSettings


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT so `finally` blocks run."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def install_stop_signals() -> None:
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)


def _say(message: str) -> None:
    print(f"[beatkeeper] {message}", file=sys.stderr, flush=True)


_NO_DEVENV = (
    "the local environment is not installed: from a checkout, `make venv` "
    "(or pip install -e ./devenv)"
)


def _dev_settings() -> DevSettings | None:
    """The local environment's settings; None (said why) where it is not installed."""
    try:
        from beatkeeper_devenv.settings import DevSettings
    except ModuleNotFoundError as error:
        if error.name != "beatkeeper_devenv":
            raise
        _say(_NO_DEVENV)
        return None
    return DevSettings.from_env(os.environ)


def _dev_up(args: argparse.Namespace) -> int:
    dev = _dev_settings()
    if dev is None:
        return 2
    from beatkeeper.operator.deployments import METRICS_PORT
    from beatkeeper_devenv.environment import local_environment
    from beatkeeper_devenv.kube import install_crds
    from beatkeeper_devenv.system import start_system

    kubeconfig = args.kubeconfig or dev.state_dir / "kubeconfig"
    external = args.cluster or dev.external_kubeconfig
    if external is not None and args.only == "node":
        _say("--only node starts a local control plane and node; it cannot join --cluster")
        return 2
    install_stop_signals()
    try:
        with local_environment(
            dev,
            redis=args.only in (None, "infra"),
            node=external is None and args.only in (None, "node"),
            kubeconfig=None if external else kubeconfig,
            external_kubeconfig=external,
            progress=_say,
        ) as env:
            if args.only is None:
                install_crds(env.kubeconfig, dev.crds_dir)
                _say("CRDs installed: scheduledtasks.beatkeeper.dev, workerpools.beatkeeper.dev")
                system = start_system(env, _say)
                _say(f"metrics: operator {system.operator_metrics}, beat {system.beat_metrics}")
                pods = f":{METRICS_PORT}/metrics (kubectl get pods -o wide)"
                _say(f"  each WorkerPool pod serves {pods}")
            _say(f"kubeconfig: {env.kubeconfig}")
            if env.node:
                _say(f"node: {env.node} (containerd, kubelet, kube-scheduler, kube-proxy, DNS)")
                images = ", ".join(
                    built.ref.removeprefix("docker.io/library/") for built in env.images.values()
                )
                _say(f"images on the node: {images}")
            if env.redis_url:
                _say(f"redis: {env.redis_url}")
                if env.node:
                    make = "kubectl create secret generic beatkeeper-redis --from-literal=url=URL"
                    _say(f"  (the host and pods reach it; a pool's broker Secret: {make})")
            _say(f"logs: {env.log_dir}")
            _say(f"processes: {', '.join(f'{c.name}={c.pid}' for c in env.supervisor.components)}")
            _say(f"try: KUBECONFIG={env.kubeconfig} kubectl get nodes,namespaces")
            if args.only == "node":
                _say(
                    f"then: KUBECONFIG={env.kubeconfig} helm install bk charts/beatkeeper -n "
                    "bk-system --create-namespace --set redis.bundled.enabled=true --wait"
                )
            _say("running; press Ctrl-C to stop")
            threading.Event().wait()
    except _Stop as stop:
        _say(f"{stop}: stopped every process this command started")
    return 0


def _demo(args: argparse.Namespace) -> int:
    dev = _dev_settings()
    if dev is None:
        return 2
    from beatkeeper_devenv.demo import run_demo

    started = time.monotonic()

    def progress(message: str) -> None:
        _say(f"{time.monotonic() - started:6.1f} s  {message}")

    install_stop_signals()
    try:
        run_demo(
            dev,
            progress,
            seconds=args.seconds,
            external_kubeconfig=args.cluster or dev.external_kubeconfig,
            prometheus=args.prometheus,
            screenshot_to=args.screenshot,
        )
    except _Stop as stop:
        _say(f"{stop} while starting: stopped every process the demo started")
        return 130
    return 0


def _operator(_args: argparse.Namespace) -> int:
    from beatkeeper.operator.main import run

    run()
    return 0


def _beat(args: argparse.Namespace) -> int:
    from beatkeeper_beat.scheduler import main

    return main(args.passthrough)


def _runs(args: argparse.Namespace) -> int:
    from beatkeeper.operator.settings import OperatorSettings
    from beatkeeper.runs_cli import main

    url = args.redis_url or OperatorSettings.from_env(os.environ).redis_url
    return main(args.target, url, args.limit, args.output, sys.stdout)


def _validate(args: argparse.Namespace) -> int:
    from beatkeeper.validate_cli import main

    return main(args.paths, args.pools, args.namespace, sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beatkeeper", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    operator = commands.add_parser(
        "operator", help="run the operator against the current kubeconfig (wraps kopf)"
    )
    operator.set_defaults(run=_operator)
    beat = commands.add_parser(
        "beat", help="run Celery beat with Beatkeeper's scheduler (HA: run two or more)"
    )
    beat.set_defaults(run=_beat)
    dev = commands.add_parser("dev", help="the local development environment")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_commands.add_parser(
        "up", help="start the local system in the foreground; Ctrl-C stops it"
    )
    up.add_argument("--kubeconfig", type=Path, help="where to write the local cluster's kubeconfig")
    up.add_argument(
        "--cluster",
        type=Path,
        metavar="KUBECONFIG",
        help="use this existing cluster instead of starting a control plane",
    )
    up.add_argument(
        "--only",
        choices=["cluster", "infra", "node"],
        help=(
            "cluster: just the control plane; infra: the control plane and Redis; node: the "
            "control plane and a real node, nothing of Beatkeeper (for helm install by hand)"
        ),
    )
    up.set_defaults(run=_dev_up)
    demo = commands.add_parser(
        "demo", help="the whole system live with the examples, then a summary (`make demo`)"
    )
    demo.add_argument(
        "--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)"
    )
    demo.add_argument(
        "--cluster",
        type=Path,
        metavar="KUBECONFIG",
        help="use this existing cluster instead of starting a control plane",
    )
    demo.add_argument(
        "--prometheus",
        action="store_true",
        help="also run Prometheus (Debian's) on 127.0.0.1, scraping the annotated pods",
    )
    demo.add_argument(
        "--screenshot",
        type=Path,
        metavar="PNG",
        help="with Prometheus: render its graphs of the dashboard's key queries with headless "
        "Chromium into PNG at the end (docs/monitoring.png is made so)",
    )
    demo.set_defaults(run=_demo)
    runs = commands.add_parser(
        "runs",
        help="a ScheduledTask's runs from the run-record stream, beyond its historyLimit",
    )
    runs.add_argument("target", metavar="NAMESPACE/NAME", help="the ScheduledTask")
    runs.add_argument(
        "--redis-url",
        help="the Redis the workers write to (default: BEATKEEPER_REDIS_URL)",
    )
    runs.add_argument("--limit", type=int, default=20, help="newest runs to show (default 20)")
    runs.add_argument("-o", "--output", choices=["table", "json"], default="table")
    runs.set_defaults(run=_runs)
    validate = commands.add_parser(
        "validate",
        help="check ScheduledTask and WorkerPool manifests offline, as the webhook would (CI)",
    )
    validate.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        required=True,
        metavar="PATH",
        help="a file or folder of manifests, or - for standard input (repeat for more)",
    )
    validate.add_argument(
        "--pools",
        action="append",
        default=[],
        metavar="PATH",
        help="WorkerPool manifests the tasks run on, if not among the files (repeatable)",
    )
    validate.add_argument(
        "-n", "--namespace", default="default", help="for manifests that name none"
    )
    validate.set_defaults(run=_validate)
    return parser


_PASSTHROUGH = ("beat",)  # extra arguments go on to celery


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in _PASSTHROUGH:
        args, extra = parser.parse_known_args(argv)
        args.passthrough = extra
    else:
        args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
