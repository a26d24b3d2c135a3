"""The autoscaler: a backlog sample, the pool's policy and `now` in; a replica count out.

Pure. The reconciler measures the backlog (`backlog.BacklogProbe`),
keeps the `ScalerState` between polls, and applies the decision to the Deployment.
The rules, in order:

1. backlog = queued (every list of the queue, priority sub-lists included)
   + reserved (delivered to a live worker, not started) + active (leased runs)
   + retries that are due (a worker's sweeper promotes them; at zero nobody would).
2. need = ceil(backlog / targetPerReplica); a pool at zero wakes only when the
   backlog exceeds activationBacklog; pre-warm asks for one replica from
   prewarmSeconds before the next slot (or retry) until it passes.
3. The recommendation is `need` clamped to [minReplicas, maxReplicas]
   (ScalingLimited says when the clamp bit).
4. Stabilization as the HorizontalPodAutoscaler does it: scale up to the lowest
   recommendation of the scale-up window (window 0: at once), scale down to the
   highest of the scale-down window, and only once a whole window was observed.
5. At most maxStep replicas added or removed per poll; never below the replicas
   the running work needs (ceil(active / concurrency)); the bounds are final.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from beatkeeper.api.workerpool import Autoscaling


@dataclass(frozen=True)
class Upcoming:
    """The next moment the pool must have a worker: a slot of a ScheduledTask, or a retry."""

    at: dt.datetime
    what: str  # "ns/task", or "retry of ns/task@slot"


@dataclass(frozen=True)
class BacklogSample:
    """One measurement of a pool's queue in Redis (see `backlog.BacklogProbe`)."""

    queued: int  # messages in the queue's lists, priority sub-lists included
    unacked: int  # delivered and not acked: reserved + running (tasks ack late)
    active: int  # runs holding a lease: running now
    retries_due: int = 0  # delayed retries whose time has come
    next_retry: Upcoming | None = None


@dataclass(frozen=True)
class Recommendation:
    at: dt.datetime
    replicas: int


@dataclass(frozen=True)
class ScalerState:
    """What the autoscaler remembers between polls (lost on restart, which only delays)."""

    since: dt.datetime | None = None  # first poll: a scale-down window must be this old
    history: tuple[Recommendation, ...] = ()


@dataclass(frozen=True)
class Limit:
    """Why the recommendation was clamped (the ScalingLimited condition)."""

    limited: bool
    reason: Literal["TooManyReplicas", "TooFewReplicas", "DesiredWithinRange"]
    message: str


@dataclass(frozen=True)
class Decision:
    replicas: int
    backlog: int
    active: int
    limit: Limit
    reason: str  # why `replicas` differs from the current count; "" when it does not
    state: ScalerState


def reserved(sample: BacklogSample, pods: int, concurrency: int, prefetch: int) -> int:
    """Delivered but not started: unacked minus running (tasks ack late).

    Unacked entries beyond what live pods can hold (concurrency x prefetch
    each) belong to workers that died without a warm shutdown: the broker puts
    them back on the queue after its short visibility timeout, and they count
    until then, so a pool at zero wakes for them instead of waiting.
    """
    return max(0, sample.unacked - sample.active)


def measure(sample: BacklogSample, pods: int, concurrency: int, prefetch: int) -> int:
    queued = sample.queued + sample.retries_due
    return queued + reserved(sample, pods, concurrency, prefetch) + sample.active


def prewarm_target(policy: Autoscaling, upcoming: Upcoming, now: dt.datetime) -> bool:
    return now >= upcoming.at - dt.timedelta(seconds=policy.prewarm_seconds)


def need(policy: Autoscaling, concurrency: int, backlog: int, current: int) -> int:
    """Replicas the backlog asks for, before bounds and stabilization."""
    if current == 0 and backlog <= policy.activation_backlog:
        return 0
    return math.ceil(backlog / (policy.target_per_replica or concurrency))


def clamp(policy: Autoscaling, wanted: int, backlog: int) -> tuple[int, Limit]:
    low, high = policy.min_replicas, policy.max_replicas
    if wanted > high:
        why = f"backlog {backlog} wants {wanted} replicas; capped at maxReplicas {high}"
        return high, Limit(True, "TooManyReplicas", why)
    if wanted < low:
        why = f"backlog {backlog} wants {wanted} replicas; kept at minReplicas {low}"
        return low, Limit(True, "TooFewReplicas", why)
    return wanted, Limit(False, "DesiredWithinRange", f"{wanted} replicas within [{low}, {high}]")


def _window(history: Sequence[Recommendation], now: dt.datetime, seconds: int) -> list[int]:
    """The recommendations of the last `seconds` (the latest one always counts)."""
    start = now - dt.timedelta(seconds=seconds)
    *earlier, latest = history
    return [r.replicas for r in earlier if r.at > start] + [latest.replicas]


def stabilize(policy: Autoscaling, current: int, state: ScalerState, now: dt.datetime) -> int:
    """The HPA's rule over the recommendations of each window (the latest included)."""
    up = min(_window(state.history, now, policy.scale_up.stabilization_seconds))
    down = max(_window(state.history, now, policy.scale_down.stabilization_seconds))
    if current < up:
        return up
    observed_long_enough = state.since is not None and now - state.since >= dt.timedelta(
        seconds=policy.scale_down.stabilization_seconds
    )
    if current > down and observed_long_enough:
        return down
    return current


def step(policy: Autoscaling, current: int, target: int) -> int:
    up, down = policy.scale_up.max_step, policy.scale_down.max_step
    if target > current and up is not None:
        return min(target, current + up)
    if target < current and down is not None:
        return max(target, current - down)
    return target


def remember(
    policy: Autoscaling, state: ScalerState, recommendation: int, now: dt.datetime
) -> ScalerState:
    keep = max(policy.scale_up.stabilization_seconds, policy.scale_down.stabilization_seconds)
    start = now - dt.timedelta(seconds=keep)
    history = tuple(r for r in state.history if start < r.at <= now)
    return ScalerState(
        since=state.since or now, history=(*history, Recommendation(now, recommendation))
    )


def explain(
    policy: Autoscaling,
    *,
    current: int,
    replicas: int,
    backlog: int,
    from_backlog: int,
    warm: Upcoming | None,
) -> str:
    """The Scaled event's message."""
    if replicas > current:
        if warm is not None and from_backlog < replicas:
            return f"prewarm for {warm.what} at {warm.at.astimezone(dt.UTC):%H:%M:%S}"
        return f"backlog {backlog} -> {replicas} replicas"
    if replicas < current:
        window = policy.scale_down.stabilization_seconds
        if backlog == 0:
            return f"scale down to {replicas} after {window} s idle"
        return f"backlog {backlog} -> {replicas} replicas after a {window} s window"
    return ""


def decide(
    policy: Autoscaling,
    *,
    concurrency: int,
    prefetch: int,
    sample: BacklogSample,
    current: int,
    pods: int,
    upcoming: Upcoming | None,
    state: ScalerState,
    now: dt.datetime,
) -> Decision:
    """Replicas for this poll; `current` is the Deployment's, `pods` the ones that exist."""
    backlog = measure(sample, pods, concurrency, prefetch)
    warm_for = [
        u for u in (upcoming, sample.next_retry) if u is not None and prewarm_target(policy, u, now)
    ]
    warm = min(warm_for, key=lambda u: u.at) if warm_for else None
    from_backlog = need(policy, concurrency, backlog, current)
    recommendation, limit = clamp(policy, max(from_backlog, 1 if warm else 0), backlog)
    state = remember(policy, state, recommendation, now)
    target = step(policy, current, stabilize(policy, current, state, now))
    running = min(current, math.ceil(sample.active / concurrency))
    replicas = min(max(target, running, policy.min_replicas), policy.max_replicas)
    return Decision(
        replicas=replicas,
        backlog=backlog,
        active=sample.active,
        limit=limit,
        reason=explain(
            policy,
            current=current,
            replicas=replicas,
            backlog=backlog,
            from_backlog=from_backlog,
            warm=warm,
        ),
        state=state,
    )
