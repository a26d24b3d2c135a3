"""Why a pool's pods cannot start, read from the pods' own status, with the next step.

Pure. The operator indexes its worker pods (`ObservedPod`, a few fields of each
pod's status as the kubelet and the scheduler wrote them) and the planner asks
`diagnose` for the pool's trouble, if any: a missing broker Secret or key, an
image the node cannot get, a container that keeps exiting, a pod no node can
take. Each trouble has a condition reason and a message that says what to run
next, so `kubectl get wp` and `kubectl describe wp` answer "why 0/1 ready".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_IMAGE_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
)
_CONFIG_REASON = "CreateContainerConfigError"
_MISSING_SECRET = re.compile(r'secret "(?P<name>[^"]+)" not found')
_MISSING_KEY = re.compile(r"couldn't find key (?P<key>\S+) in Secret (?P<ns>[^/\s]+)/(?P<name>\S+)")
_MESSAGE_LIMIT = 400


@dataclass(frozen=True)
class ObservedPod:
    """What the planner reads of one worker pod."""

    name: str
    image: str
    deleting: bool
    waiting_reason: str = ""
    waiting_message: str = ""
    restarts: int = 0
    last_exit_code: int | None = None
    last_message: str = ""
    unschedulable: str = ""  # the scheduler's message when PodScheduled=False, Unschedulable

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ObservedPod:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        containers = spec.get("containers") or [{}]
        statuses = status.get("containerStatuses") or [{}]
        state = statuses[0].get("state") or {}
        last = (statuses[0].get("lastState") or {}).get("terminated") or {}
        scheduled: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {}
        )
        unschedulable = (
            scheduled.get("message", "") or "no node can take it"
            if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
            else ""
        )
        return cls(
            name=str(meta.get("name", "")),
            image=str(containers[0].get("image", "")),
            deleting=bool(meta.get("deletionTimestamp")),
            waiting_reason=str((state.get("waiting") or {}).get("reason", "")),
            waiting_message=str((state.get("waiting") or {}).get("message", "")),
            restarts=int(statuses[0].get("restartCount") or 0),
            last_exit_code=last.get("exitCode"),
            last_message=str(last.get("message") or last.get("reason") or ""),
            unschedulable=unschedulable,
        )


@dataclass(frozen=True)
class PodTrouble:
    """A condition reason and a message that ends with the command to run next."""

    reason: str
    message: str


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def _config(namespace: str, pod: ObservedPod, secret: str, key: str) -> PodTrouble:
    found = _MISSING_KEY.search(pod.waiting_message)
    if found:
        return PodTrouble(
            "BrokerSecretKeyMissing" if found["name"] == secret else "PodConfigError",
            f"pods cannot start: Secret {namespace}/{found['name']} has no key "
            f"{found['key']!r}; add it: kubectl create secret generic {found['name']} -n "
            f"{namespace} --from-literal={found['key']}=REDIS_URL --dry-run=client -o yaml "
            "| kubectl apply -f -",
        )
    found = _MISSING_SECRET.search(pod.waiting_message)
    if found and found["name"] == secret:
        return PodTrouble(
            "BrokerSecretMissing",
            f"pods cannot start: the broker Secret {namespace}/{secret} (spec.brokerSecretRef) "
            f"does not exist; create it: kubectl create secret generic {secret} -n {namespace} "
            f"--from-literal={key}=REDIS_URL",
        )
    return PodTrouble(
        "PodConfigError",
        f"pods cannot start: {_short(pod.waiting_message)}; see: kubectl describe pod "
        f"{pod.name} -n {namespace}",
    )


def _image(namespace: str, pod: ObservedPod) -> PodTrouble:
    # The kubelet's back-off message wraps the pull error: keep only the error, so the
    # message stays the same while the kubelet alternates between the two states.
    error = pod.waiting_message.rsplit("ErrImagePull: ", 1)[-1]
    return PodTrouble(
        "ImageNotPresent",
        f"image {pod.image!r} cannot be pulled: {_short(error) or pod.waiting_reason}; "
        "push it where the nodes pull from, "
        f"or load it onto them, or fix spec.image; see: kubectl describe pod {pod.name} "
        f"-n {namespace}",
    )


def _crash(namespace: str, pod: ObservedPod) -> PodTrouble:
    code = "" if pod.last_exit_code is None else f" with code {pod.last_exit_code}"
    detail = f": {_short(pod.last_message)}" if pod.last_message else ""
    return PodTrouble(
        "CrashLoop",
        f"the worker container keeps exiting{code}{detail} (restarted {pod.restarts} times); "
        f"see why: kubectl logs {pod.name} -n {namespace} --previous",
    )


def _unschedulable(namespace: str, pod: ObservedPod) -> PodTrouble:
    return PodTrouble(
        "Unschedulable",
        f"no node can run the pool's pods: {_short(pod.unschedulable)}; lower "
        f"spec.template.resources or its nodeSelector, or add nodes; see: kubectl describe "
        f"pod {pod.name} -n {namespace}",
    )


def diagnose(
    namespace: str, pods: Iterable[ObservedPod], secret: str, key: str
) -> PodTrouble | None:
    """The most telling trouble among the pool's live pods, or None when they can start.

    `secret`, `key`: the pool's brokerSecretRef, so its absence is named as such.
    Order: configuration, image, scheduling, then crash loops (a pod that cannot
    be configured or pulled never gets to crash).
    """
    live = sorted((pod for pod in pods if not pod.deleting), key=lambda pod: pod.name)
    for pod in live:
        if pod.waiting_reason == _CONFIG_REASON:
            return _config(namespace, pod, secret, key)
    for pod in live:
        if pod.waiting_reason in _IMAGE_REASONS:
            return _image(namespace, pod)
    for pod in live:
        if pod.unschedulable:
            return _unschedulable(namespace, pod)
    for pod in live:
        if pod.waiting_reason == "CrashLoopBackOff":
            return _crash(namespace, pod)
    return None
