"""Names of every Redis key the worker writes; docs/redis-data-model.md describes each.

All keys share the `beatkeeper:` prefix. Per-queue keys carry the queue name
(which includes the namespace), so pools never touch each other's indexes.
"""

from __future__ import annotations

RUN_PREFIX = "beatkeeper:run:"
LEASES_PREFIX = "beatkeeper:leases:"
ACTIVE_PREFIX = "beatkeeper:active:"
RETRIES_PREFIX = "beatkeeper:retries:"
SWEEPER_PREFIX = "beatkeeper:sweeper:"
STATS_PREFIX = "beatkeeper:stats:"
DELETED_PREFIX = "beatkeeper:deleted:"
RUN_NOW_PREFIX = "beatkeeper:run-now:"
UNCLAIMED_PREFIX = "beatkeeper:unclaimed:"
REGISTERED_PREFIX = "beatkeeper:registered:"
REGISTERED_TTL_SECONDS = 7 * 86400  # refreshed by every worker start


def run_key(run_id: str) -> str:
    """Hash: the registry entry of one run (state, attempt, lease, envelope)."""
    return f"{RUN_PREFIX}{run_id}"


def leases_key(queue: str) -> str:
    """Sorted set: run ids of a queue that hold a lease, scored by lease expiry (ms)."""
    return f"{LEASES_PREFIX}{queue}"


def active_key(object_key: str) -> str:
    """Sorted set: in-flight run ids of one ScheduledTask, scored by marker expiry (ms)."""
    return f"{ACTIVE_PREFIX}{object_key}"


def retries_key(queue: str) -> str:
    """Sorted set: next-attempt envelopes (JSON) of a queue, scored by due time (ms)."""
    return f"{RETRIES_PREFIX}{queue}"


def sweeper_key(queue: str) -> str:
    """String: the token of the one worker that sweeps this queue, with a short TTL."""
    return f"{SWEEPER_PREFIX}{queue}"


def stats_key(queue: str) -> str:
    """Hash: counters of deliveries the claim dropped, by why."""
    return f"{STATS_PREFIX}{queue}"


def deleted_key(object_key: str) -> str:
    """String: when a ScheduledTask was deleted (ms); runs of earlier slots never start."""
    return f"{DELETED_PREFIX}{object_key}"


def run_now_key(uid: str, token: str) -> str:
    """String: the slot a ScheduledTask's run-now token was first acted on at."""
    return f"{RUN_NOW_PREFIX}{uid}:{token}"


def unclaimed_key(queue: str) -> str:
    """Sorted set: published run ids of a queue no worker has claimed yet, scored by
    when they were (re)published (ms); the sweeper republishes one left unclaimed."""
    return f"{UNCLAIMED_PREFIX}{queue}"


def registered_key(queue: str) -> str:
    """Hash: per worker (its hostname), the task names its image registers, as JSON
    `{"tasks": [...], "at": ms}`; the operator shows their union in the pool's
    status.registeredTasks, and admission warns about a task no worker registers."""
    return f"{REGISTERED_PREFIX}{queue}"
