"""WorkerPool admission with and without the author's access check (SubjectAccessReviews).

A real local control plane and the operator's admission webhook, served in this
process as the operator serves it (`runtime.start_admission`, local mode: the
apiserver calls it over HTTPS). A real non-admin user, by a client certificate the
control plane's CA signs (`carol`, allowed to create workerpools, deployments and
pods in the namespace), makes N server-side dry-run WorkerPool creates, first
`--threads` at a time, then one at a time. Each pool names a ServiceAccount, so the
check needs two permissions (create deployments, create pods). Three cases, each
with a webhook of its own:

- no access check (the anchor: the apiserver, the webhook's round trip, validation);
- the access check with its 5 s cache of allowed answers (as the operator runs it);
- the access check with no cache (one SubjectAccessReview per permission per pool).

Before each case is measured, the webhook is shown to be the one answering (an
invalid pool is refused with its message; for the checks, a user who may create
WorkerPools but not pods is refused), and `--warmup` creates open the connections.
The SubjectAccessReviews each pass made are counted (`AccessChecker.reviews`).
`--rounds` rounds of all three, the order rotated each round; the table has the
medians over the rounds and their ratios to the anchor's at the same concurrency.

    .venv/bin/python -m bench.pool_admission [--pools 1000] [--threads 8] [--rounds 3]

Prints a table, then one JSON line:
{"bench": "pool_admission", "pools": N, "threads": T, "cases": [...], ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from beatkeeper.operator.access import AccessChecker
from beatkeeper.operator.kubeapi import KubeApi
from beatkeeper.operator.runtime import start_admission
from beatkeeper.operator.settings import OperatorSettings
from beatkeeper.operator.webhook import Known
from beatkeeper_devenv.environment import local_environment
from beatkeeper_devenv.kube import install_crds, kubectl
from beatkeeper_devenv.settings import DevSettings
from beatkeeper_devenv.users import User, certificate_user, local_ca

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
GROUP, VERSION, PLURAL = "beatkeeper.dev", "v1alpha1", "workerpools"
INVALID_HOST = "not a host!"  # the CRD schema admits it, the webhook's validation does not
CASES: tuple[tuple[str, float | None], ...] = (
    ("no access check", None),
    ("access check, 5 s cache", 5.0),
    ("access check, no cache", 0.0),
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pool(name: str, allowed_hosts: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": "worker:1",
        "replicas": 0,
        "template": {"serviceAccountName": "builder"},
    }
    if allowed_hosts is not None:
        spec["allowedHosts"] = allowed_hosts
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def dry_run_create(api: Any, body: Mapping[str, Any]) -> None:
    api.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, dict(body), dry_run="All"
    )


def refusal(api: Any, body: Mapping[str, Any]) -> tuple[int, str] | None:
    """The status and message a dry-run create is refused with; None when admitted."""
    try:
        dry_run_create(api, body)
    except ApiException as error:
        message = ""
        try:
            message = str(json.loads(error.body or "{}").get("message") or "")
        except ValueError:
            message = str(error.body or "")
        return int(error.status or 0), message
    return None


def create_all(api: Any, count: int, threads: int, prefix: str = "p") -> tuple[list[float], float]:
    """`count` dry-run creates, `threads` at a time: each one's latency (ms), the total (s)."""

    def create(index: int) -> float:
        started = time.monotonic()
        dry_run_create(api, pool(f"{prefix}{index:05d}"))
        return (time.monotonic() - started) * 1000

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as executor:
        latencies = list(executor.map(create, range(count)))
    return latencies, time.monotonic() - started


def wait_until_served(api: Any, timeout: float = 60) -> None:
    """Until the webhook just registered answers: the invalid pool is refused by it.

    The failure policy is Ignore, so a webhook the apiserver cannot reach (or the
    previous case's, stopped) would admit it: only this webhook's refusal counts.
    """
    deadline = time.monotonic() + timeout
    while True:
        refused = refusal(api, pool("probe-invalid", [INVALID_HOST]))
        if refused is not None and refused[0] == 422 and "allowedHosts" in refused[1]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the webhook does not answer within {timeout:g} s: {refused}")
        time.sleep(0.2)


def grant(kubeconfig: Path, user: User, role: str, resources: str) -> None:
    kubectl(kubeconfig, "create", "role", role, "-n", NAMESPACE, "--verb=create,get",
            f"--resource={resources}")  # fmt: skip
    kubectl(kubeconfig, "create", "rolebinding", role, "-n", NAMESPACE, f"--role={role}",
            f"--user={user.name}")  # fmt: skip


def api_client(kubeconfig: Path) -> ApiClient:
    client: ApiClient = kubernetes.config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]
    client.configuration.connection_pool_maxsize = 16
    return client


@contextmanager
def custom_objects(kubeconfig: Path) -> Iterator[Any]:
    client = api_client(kubeconfig)
    try:
        yield kubernetes.client.CustomObjectsApi(client)
    finally:
        client.close()  # type: ignore[no-untyped-call]


def measure_case(
    label: str,
    checker: AccessChecker | None,
    api: Any,
    denied_api: Any,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """The warm-up, then the concurrent and the serial pass, with the webhook running."""
    wait_until_served(api)
    if checker is not None:  # the check is in the path: a user without `create pods` is refused
        refused = refusal(denied_api, pool("probe-denied"))
        if refused is None or refused[0] != 403 or "may not create pods" not in refused[1]:
            raise RuntimeError(f"{label}: the user without create pods was not refused: {refused}")
    create_all(api, args.warmup, args.threads, prefix="w")
    results = []
    for threads in (args.threads, 1):
        before = checker.reviews if checker is not None else 0
        latencies, total = create_all(api, args.pools, threads)
        results.append(
            {
                "case": label,
                "threads": threads,
                "total_s": round(total, 2),
                "per_s": round(args.pools / total, 1),
                "p50_ms": round(statistics.median(latencies), 2),
                "p99_ms": round(percentile(latencies, 0.99), 2),
                "subject_access_reviews": (checker.reviews - before) if checker else 0,
            }
        )
    return results


def summarize(passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case and threads: the medians over the rounds, and their ratios to the anchor's."""
    rows = []
    for label, _ttl in CASES:
        for threads in sorted({p["threads"] for p in passes}, reverse=True):
            mine = [p for p in passes if p["case"] == label and p["threads"] == threads]
            row: dict[str, Any] = {"case": label, "threads": threads}
            for field in ("total_s", "per_s", "p50_ms", "p99_ms"):
                row[field] = round(statistics.median(p[field] for p in mine), 2)
            row["subject_access_reviews"] = [p["subject_access_reviews"] for p in mine]
            row["rounds_p50_ms"] = [p["p50_ms"] for p in mine]
            rows.append(row)
    anchors = {r["threads"]: r for r in rows if r["case"] == CASES[0][0]}
    for row in rows:
        anchor = anchors[row["threads"]]
        row["p50_vs_anchor"] = round(row["p50_ms"] / anchor["p50_ms"], 2)
        row["total_vs_anchor"] = round(row["total_s"] / anchor["total_s"], 2)
    return rows


def run_case(
    label: str,
    ttl: float | None,
    config: OperatorSettings,
    kube: KubeApi,
    api: Any,
    denied_api: Any,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """One case with a webhook (and an access checker) of its own, stopped after."""
    checker = None if ttl is None else AccessChecker.for_client(kube.client, ttl=ttl)
    admission = start_admission(config, kube, Known(pools=dict, access=checker))
    assert admission is not None
    try:
        return measure_case(label, checker, api, denied_api, args)
    finally:
        admission.stop()
        if checker is not None:
            checker.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=100, help="creates before each case")
    parser.add_argument(
        "--rounds", type=int, default=3, help="of every case, the order rotated each round"
    )
    args = parser.parse_args(argv)
    settings = DevSettings.from_env(os.environ)
    config = OperatorSettings.from_env({"BEATKEEPER_WEBHOOK": "local"})
    passes: list[dict[str, Any]] = []
    with (
        local_environment(settings, redis=False) as env,
        tempfile.TemporaryDirectory(prefix="bench-users-") as users,
    ):
        install_crds(env.kubeconfig, REPO / "crds")
        kubectl(env.kubeconfig, "create", "namespace", NAMESPACE)
        ca = local_ca(env.kubeconfig)
        if ca is None:
            raise SystemExit("needs the local control plane's client CA (a certificate user)")
        carol = certificate_user(env.kubeconfig, ca, Path(users), "carol", ("team",))
        mallory = certificate_user(env.kubeconfig, ca, Path(users), "mallory", ("team",))
        grant(env.kubeconfig, carol, "pools", "workerpools.beatkeeper.dev,deployments.apps,pods")
        grant(env.kubeconfig, mallory, "pools-only", "workerpools.beatkeeper.dev,deployments.apps")
        admin = api_client(env.kubeconfig)
        kube = KubeApi(admin)
        try:
            with (
                custom_objects(carol.kubeconfig) as api,
                custom_objects(mallory.kubeconfig) as denied_api,
            ):
                for round_ in range(args.rounds):
                    # Rotate the order, so drift (and going first) favours no case.
                    for label, ttl in CASES[round_ % len(CASES) :] + CASES[: round_ % len(CASES)]:
                        passes += run_case(label, ttl, config, kube, api, denied_api, args)
        finally:
            admin.close()  # type: ignore[no-untyped-call]
    results = summarize(passes)
    print(
        f"pool_admission: {args.pools} dry-run WorkerPool creates per pass by user carol, "
        f"medians of {args.rounds} rounds; SARs per round"
    )
    columns = ("threads", "total_s", "per_s", "p50_ms", "p99_ms", "p50_vs_anchor",
               "total_vs_anchor")  # fmt: skip
    print(f"{'case':<26}" + "".join(f"{c:>{len(c) + 2}}" for c in columns) + "  SARs")
    for row in results:
        sars = ", ".join(str(n) for n in row["subject_access_reviews"])
        cells = "".join(f"{row[c]!s:>{len(c) + 2}}" for c in columns)
        print(f"{row['case']:<26}{cells}  {sars}")
    result = {
        "bench": "pool_admission",
        "pools": args.pools,
        "threads": args.threads,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "permissions_per_pool": 2,
        "cases": results,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
