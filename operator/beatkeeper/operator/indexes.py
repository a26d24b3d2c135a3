"""kopf indexes seen as plain mappings, and the object snapshots they hold."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import kopf

Key = tuple[str, str]


class IndexView(Mapping[Key, Mapping[str, Any]]):
    """A kopf index keyed (namespace, name) with one value per key, as a mapping."""

    def __init__(self, index: kopf.Index[Key, Any]) -> None:
        self._index = index

    def __getitem__(self, key: Key) -> Mapping[str, Any]:
        store = self._index[key]
        for value in store:
            return value  # type: ignore[no-any-return]
        raise KeyError(key)

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._index))

    def __len__(self) -> int:
        return len(self._index)


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a body the reconcilers and event posting need."""
    meta = body["metadata"]
    keep = (
        "name",
        "namespace",
        "uid",
        "generation",
        "creationTimestamp",
        "annotations",
        "deletionTimestamp",
        "finalizers",
    )
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {key: meta[key] for key in keep if key in meta},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def tasks_of_pool(
    tasks: Mapping[Key, Mapping[str, Any]], namespace: str | None, pool: str | None
) -> list[Mapping[str, Any]]:
    return [
        body
        for (task_namespace, _), body in list(tasks.items())
        if task_namespace == namespace and (body.get("spec") or {}).get("workerPool") == pool
    ]


def reconcile_fingerprint(meta: Mapping[str, Any], runs_failing: bool = False) -> int:
    """What of an object a ScheduledTask reconcile reads.

    Spec changes bump `generation`; run-now tokens are annotations; deletion
    and finalizers are metadata; of status, only whether the runs are failing
    (`runs_failing`) changes the plan. A watch event that leaves all of them as
    they were changed only status (mostly the operator's own writes) and
    needs no reconcile: the resync still visits every object.
    """
    return hash(
        (
            meta.get("generation"),
            json.dumps(meta.get("annotations") or {}, sort_keys=True),
            meta.get("deletionTimestamp"),
            tuple(meta.get("finalizers") or ()),
            runs_failing,
        )
    )


class SpecGenerations:
    """The last spec generation acted on, per object uid.

    A pool's tasks are requeued only when its spec changes, or the pool
    arrives or goes; its status writes (every poll) change nothing for them.
    """

    def __init__(self) -> None:
        self._seen: dict[str, int | None] = {}

    def changed(self, uid: str, generation: int | None, *, deleted: bool = False) -> bool:
        if deleted:
            self._seen.pop(uid, None)
            return True
        if uid in self._seen and self._seen[uid] == generation:
            return False
        self._seen[uid] = generation
        return True
