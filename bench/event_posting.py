"""One recurring Warning posted N times: our KubeApi.post_event against kopf's event poster.

A real local control plane (etcd, kube-apiserver, controller-manager; no node, no
Redis, no operator). In namespace `bench`, each way and round gets a ConfigMap of
its own as the involved object, and the same Warning (reason `RunFailed`, the same
message) is posted on it `--events` times, one after the other, each occurrence with
a different run id:

- ours: `KubeApi(client).post_event(body, "Warning", "RunFailed", message,
  {"beatkeeper.dev/run": run_id})`, the client built from the control plane's
  kubeconfig with the operator's User-Agent. One Event per type/reason/message per
  object: the first occurrence creates it, every repeat is a create (409), a read
  and a patch of count, lastTimestamp and the annotations (the run id).
- kopf.event: kopf's public `kopf.event(body, type=, reason=, message=)`, drained by
  kopf's own poster task (`kopf._core.engines.posting.poster`), wired as
  `kopf._core.reactor.running.spawn_tasks` wires it: a `Vault` holding the
  `ConnectionInfo` from `kopf.login_via_client` (the same kubeconfig) in
  `auth.vault_var`, the settings in `posting.settings_var`, the event queue and
  its loop in `posting.event_queue_var` / `event_queue_loop_var`, and the poster's
  Backbone filled from kopf's own discovery (`scanning.scan_resources`), so the
  Events resource is the one kopf finds. kopf.event only queues; the time runs
  until kopf's poster has finished the Nth `kopf._cogs.clients.events.post_event`
  (counted by a wrapper that calls kopf's function unchanged). kopf has no
  annotations parameter, so the run id has nowhere to go.
- kopf post_event: the same kopf function awaited directly N times (no queue), the
  lower bound of kopf's path.

Nothing of kopf's path is imitated: its posts are kopf's code with kopf's aiohttp
session. Warnings kopf's poster logs (it swallows failed posts) are counted.

Afterwards, for each: the Events stored for the ConfigMap (a list with the field
selector involvedObject.uid=...), the `count` they sum to (an Event without the
field counts 0), how many of the N run ids can be read back from the Events'
annotations (ours: the last one only, each repeat replaces it), the wall time for
the N posts, the apiserver's requests on core/v1 events and its etcd requests for
events in that time (deltas of `apiserver_request_total` and `etcd_requests_total`
from /metrics; other clients' requests would count too, there are none but the
controller-manager's), and the stored Events' size as JSON. `--rounds` rounds, the
order reversed every other round; the table has the medians over the rounds.

    .venv/bin/python -m bench.event_posting [--events 500] [--rounds 3]

Prints a table, then one JSON line:
{"bench": "event_posting", "events": N, "rounds": R, "ways": [...], ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import kopf
import kubernetes
from kopf._cogs.clients import auth, events, scanning
from kopf._cogs.structs import credentials, references
from kopf._core.engines import posting
from kubernetes.client import ApiClient, CoreV1Api

from beatkeeper.operator.kubeapi import USER_AGENT, KubeApi
from beatkeeper_devenv.environment import local_environment
from beatkeeper_devenv.kube import kubectl
from beatkeeper_devenv.settings import DevSettings

NAMESPACE = "bench"
REASON = "RunFailed"
MESSAGE = "task bench.tasks.flaky failed: ConnectionError: broker unreachable"
RUN_ANNOTATION = "beatkeeper.dev/run"
OURS, KOPF_EVENT, KOPF_DIRECT = "ours", "kopf.event", "kopf post_event"
WAYS = (OURS, KOPF_EVENT, KOPF_DIRECT)
LABELS = {
    OURS: "ours: KubeApi.post_event",
    KOPF_EVENT: "kopf.event (kopf's poster)",
    KOPF_DIRECT: "kopf post_event, awaited",
}
METRIC = re.compile(r"^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$")


class WarningCounter(logging.Handler):
    """Counts the warnings kopf logs when a post fails (it swallows the error)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class KopfPoster:
    """kopf's event posting as kopf's reactor sets it up, in one event loop."""

    def __init__(self, kubeconfig: Path) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.logger = logging.getLogger("bench.event_posting.kopf")
        self.settings = kopf.OperatorSettings()
        # As if the operator were started with KUBECONFIG: the client library reads the
        # variable when imported, so its default location is pointed there as well.
        os.environ["KUBECONFIG"] = str(kubeconfig)
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
        info = kopf.login_via_client(logger=self.logger, settings=self.settings)
        if info is None:
            raise SystemExit("kopf.login_via_client found no credentials")
        self.vault = credentials.Vault({"login_via_client": info})
        auth.vault_var.set(self.vault)
        posting.settings_var.set(self.settings)
        self.queue: posting.K8sEventQueue = asyncio.Queue()
        posting.event_queue_var.set(self.queue)
        posting.event_queue_loop_var.set(self.loop)
        self.warnings = WarningCounter()
        logging.getLogger("kopf").addHandler(self.warnings)
        self.logger.addHandler(self.warnings)
        self.backbone = references.Backbone()
        self.loop.run_until_complete(self._discover())
        self.resource = self.backbone[references.EVENTS]
        # Count kopf's completed posts: the poster calls `events.post_event` by its
        # module attribute, so a wrapper there sees every post and changes nothing.
        self.posted = 0
        self.done = asyncio.Event()
        self.target = 0
        original = events.post_event

        async def counted(**kwargs: Any) -> None:
            try:
                await original(**kwargs)
            finally:
                self.posted += 1
                if self.posted >= self.target:
                    self.done.set()

        events.post_event = counted
        self.original = original
        self.poster = self.loop.create_task(
            posting.poster(event_queue=self.queue, backbone=self.backbone, settings=self.settings)
        )

    async def _discover(self) -> None:
        found = await scanning.scan_resources(
            groups={""}, settings=self.settings, logger=self.logger
        )
        await self.backbone.fill(resources=found)

    def via_kopf_event(self, body: Mapping[str, Any], count: int) -> float:
        """`count` kopf.event calls; seconds until kopf's poster has posted them all."""

        async def run() -> float:
            self.posted, self.target = 0, count
            self.done.clear()
            started = time.monotonic()
            for _ in range(count):
                kopf.event(
                    kopf.Body(cast(kopf.RawBody, dict(body))),
                    type="Warning",
                    reason=REASON,
                    message=MESSAGE,
                )
            await asyncio.wait_for(self.done.wait(), timeout=600)
            return time.monotonic() - started

        return self.loop.run_until_complete(run())

    def via_post_event(self, body: Mapping[str, Any], count: int) -> float:
        """kopf's `post_event` awaited `count` times, one after the other."""
        ref = kopf.build_object_reference(kopf.Body(cast(kopf.RawBody, dict(body))))

        async def run() -> float:
            started = time.monotonic()
            for _ in range(count):
                await self.original(
                    ref=ref,
                    type="Warning",
                    reason=REASON,
                    message=MESSAGE,
                    resource=self.resource,
                    settings=self.settings,
                    logger=self.logger,
                )
            return time.monotonic() - started

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        events.post_event = self.original
        self.poster.cancel()

        async def finish() -> None:
            await asyncio.gather(self.poster, return_exceptions=True)
            await self.vault.close()

        self.loop.run_until_complete(finish())
        self.loop.close()


def api_client(kubeconfig: Path) -> ApiClient:
    client: ApiClient = kubernetes.config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]
    client.configuration.connection_pool_maxsize = 32
    client.user_agent = USER_AGENT
    return client


def metrics(client: ApiClient) -> dict[str, float]:
    """The apiserver's requests on core/v1 events (by verb) and etcd's for events."""
    request = client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = client.call_api(*request)
    if not 200 <= response.status <= 299:
        raise RuntimeError(f"GET /metrics: {response.status}")
    text = response.read().decode()  # type: ignore[no-untyped-call]
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = METRIC.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name == "apiserver_request_total":
            if fields.get("resource") == "events" and fields.get("group") == "":
                key = f"api_{fields.get('verb', '?').lower()}"
                totals[key] = totals.get(key, 0) + float(value)
        elif name == "etcd_requests_total" and fields.get("type", "").endswith("events"):
            totals["etcd"] = totals.get("etcd", 0) + float(value)
    return totals


def config_map(core: CoreV1Api, name: str) -> dict[str, Any]:
    created = core.create_namespaced_config_map(
        NAMESPACE,
        {"metadata": {"name": name}, "data": {"task": "bench.tasks.flaky"}},  # type: ignore[arg-type]
    )
    assert created.metadata is not None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": created.metadata.uid},
    }


def stored_events(client: ApiClient, uid: str) -> list[dict[str, Any]]:
    response: Any = CoreV1Api(client).list_namespaced_event(
        NAMESPACE, field_selector=f"involvedObject.uid={uid}", _preload_content=False
    )
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return items


def run_way(
    way: str,
    round_: int,
    count: int,
    client: ApiClient,
    kube: KubeApi,
    kopf_poster: KopfPoster,
) -> dict[str, Any]:
    core = CoreV1Api(client)
    body = config_map(core, f"flaky-{round_}-{re.sub(r'[^a-z0-9]+', '-', way)}")
    uid = body["metadata"]["uid"]
    run_ids = [f"run-{round_}-{index:05d}" for index in range(count)]
    warnings_before = len(kopf_poster.warnings.messages)
    before = metrics(client)
    post: Callable[[], float]
    if way == OURS:

        def post() -> float:
            started = time.monotonic()
            for run_id in run_ids:
                kube.post_event(body, "Warning", REASON, MESSAGE, {RUN_ANNOTATION: run_id})
            return time.monotonic() - started

    elif way == KOPF_EVENT:

        def post() -> float:
            return kopf_poster.via_kopf_event(body, count)

    else:

        def post() -> float:
            return kopf_poster.via_post_event(body, count)

    seconds = post()
    after = metrics(client)
    stored = stored_events(client, uid)
    found = {(item["metadata"].get("annotations") or {}).get(RUN_ANNOTATION) for item in stored} - {
        None
    }
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    requests = sum(value for key, value in delta.items() if key.startswith("api_"))
    result = {
        "way": way,
        "round": round_,
        "events_stored": len(stored),
        "count_sum": sum(int(item.get("count") or 0) for item in stored),
        "run_ids_retrievable": len(found & set(run_ids)),
        "last_run_id_on_event": run_ids[-1] in found,
        "total_s": round(seconds, 3),
        "per_post_ms": round(seconds / count * 1000, 3),
        "api_requests": int(requests),
        "api_requests_by_verb": {
            key[4:]: int(value) for key, value in sorted(delta.items()) if key.startswith("api_")
        },
        "etcd_requests": int(delta["etcd"]) if "etcd" in delta else None,
        "stored_json_bytes": sum(len(json.dumps(item)) for item in stored),
        "kopf_warnings": len(kopf_poster.warnings.messages) - warnings_before,
    }
    core.delete_collection_namespaced_event(NAMESPACE, field_selector=f"involvedObject.uid={uid}")
    core.delete_namespaced_config_map(body["metadata"]["name"], NAMESPACE)
    return result


def median(rows: list[dict[str, Any]], key: str) -> Any:
    values = [row[key] for row in rows if row[key] is not None]
    if not values:
        return None
    value = statistics.median(values)
    return round(value, 3) if isinstance(value, float) else value


def summarize(passes: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    results = []
    for way in WAYS:
        rows = [row for row in passes if row["way"] == way]
        results.append(
            {
                "way": way,
                "events_stored": median(rows, "events_stored"),
                "count_sum": median(rows, "count_sum"),
                "run_ids_retrievable": median(rows, "run_ids_retrievable"),
                "last_run_id_on_event": all(row["last_run_id_on_event"] for row in rows),
                "total_s": median(rows, "total_s"),
                "per_post_ms": median(rows, "per_post_ms"),
                "api_requests": median(rows, "api_requests"),
                "api_requests_per_post": round(median(rows, "api_requests") / count, 2),
                "etcd_requests": median(rows, "etcd_requests"),
                "stored_json_bytes": median(rows, "stored_json_bytes"),
                "kopf_warnings": sum(row["kopf_warnings"] for row in rows),
                "rounds": rows,
            }
        )
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500, help="posts per way and round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="of every way, the order reversed every other round"
    )
    args = parser.parse_args(argv)
    settings = DevSettings.from_env(os.environ)
    passes: list[dict[str, Any]] = []
    with local_environment(settings, redis=False, node=False) as env:
        kubectl(env.kubeconfig, "create", "namespace", NAMESPACE)
        client = api_client(env.kubeconfig)
        kube = KubeApi(client)
        kopf_poster = KopfPoster(env.kubeconfig)
        try:
            for round_ in range(args.rounds):
                order = WAYS if round_ % 2 == 0 else WAYS[::-1]
                for way in order:
                    passes.append(run_way(way, round_, args.events, client, kube, kopf_poster))
        finally:
            kopf_poster.close()
            client.close()  # type: ignore[no-untyped-call]
    results = summarize(passes, args.events)
    print(
        f"event_posting: the same Warning ({REASON}, one message) posted {args.events} times "
        f"on one ConfigMap per way, one post at a time; medians of {args.rounds} rounds"
    )
    columns = ("events_stored", "count_sum", "run_ids_retrievable", "total_s", "per_post_ms",
               "api_requests", "etcd_requests", "stored_json_bytes")  # fmt: skip
    print(f"{'way':<28}" + "".join(f"{c:>{len(c) + 2}}" for c in columns))
    for row in results:
        cells = "".join(f"{row[c]!s:>{len(c) + 2}}" for c in columns)
        print(f"{LABELS[row['way']]:<28}{cells}")
    warnings = sum(row["kopf_warnings"] for row in results)
    if warnings:
        print(
            f"kopf logged {warnings} warnings (failed posts): {kopf_poster.warnings.messages[:3]}"
        )
    result = {
        "bench": "event_posting",
        "events": args.events,
        "rounds": args.rounds,
        "reason": REASON,
        "kopf": "kopf.event through kopf's poster task, and kopf's post_event awaited",
        "ways": results,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
