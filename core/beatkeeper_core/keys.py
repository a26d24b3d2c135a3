"""The name of every Redis key Beatkeeper reads or writes; docs/redis-data-model.md
describes each. Nothing else spells a key name (kombu names its own: queues, `unacked`).

- The workers' keys (`KeySpace`): the run registry, leases, retries, the run-record
  stream. Beatkeeper's own share the `beatkeeper:` prefix; per-queue keys carry the
  queue name (which includes the namespace), so pools never touch each other's indexes.
- The operator's and beat's keys, never in a tenant's key space: redbeat's entries,
  schedule and lock (under the redbeat prefix), the run-now guard, the parked records,
  the tenancy records.

With Redis tenancy on (`beatkeeper_core.tenancy`), a namespace's workers use a
`KeySpace` whose prefix (`bk:<namespace>:`) goes before every one of their names,
and before kombu's own keys and channels, so a Redis ACL of the form
`~bk:<namespace>:*` confines them. The module-level functions are the keys of
the root key space (no prefix): single-credential installs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from beatkeeper_core.contract import object_key

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
RUN_RECORDS_STREAM = "beatkeeper:runs"
# Records the operator could not apply to status, kept for a look (admin-only).
PARKED_STREAM = f"{RUN_RECORDS_STREAM}:parked"
# The operator's own record of each namespace's credential (admin-only keys).
TENANCY_STATE_PREFIX = "beatkeeper:tenancy:"
TENANT_PREFIX = "bk:"
REDBEAT_KEY_PREFIX = "redbeat:"  # BEATKEEPER_REDBEAT_PREFIX unless set

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class KeySpace:
    """Every Redis key name of one tenant: the names below, after `prefix`."""

    prefix: str = ""

    def run_key(self, run_id: str) -> str:
        """Hash: the registry entry of one run (state, attempt, lease, envelope)."""
        return f"{self.prefix}{RUN_PREFIX}{run_id}"

    def leases_key(self, queue: str) -> str:
        """Sorted set: run ids of a queue that hold a lease, scored by lease expiry (ms)."""
        return f"{self.prefix}{LEASES_PREFIX}{queue}"

    def active_key(self, object_key: str) -> str:
        """Sorted set: in-flight run ids of one ScheduledTask, scored by marker expiry (ms)."""
        return f"{self.prefix}{ACTIVE_PREFIX}{object_key}"

    def retries_key(self, queue: str) -> str:
        """Sorted set: next-attempt envelopes (JSON) of a queue, scored by due time (ms)."""
        return f"{self.prefix}{RETRIES_PREFIX}{queue}"

    def sweeper_key(self, queue: str) -> str:
        """String: the token of the one worker that sweeps this queue, with a short TTL."""
        return f"{self.prefix}{SWEEPER_PREFIX}{queue}"

    def stats_key(self, queue: str) -> str:
        """Hash: counters of deliveries the claim dropped, by why."""
        return f"{self.prefix}{STATS_PREFIX}{queue}"

    def deleted_key(self, object_key: str) -> str:
        """String: when a ScheduledTask was deleted (ms); runs of earlier slots never start."""
        return f"{self.prefix}{DELETED_PREFIX}{object_key}"

    def unclaimed_key(self, queue: str) -> str:
        """Sorted set: published run ids of a queue no worker has claimed yet, scored by
        when they were (re)published (ms); the sweeper republishes one left unclaimed."""
        return f"{self.prefix}{UNCLAIMED_PREFIX}{queue}"

    def registered_key(self, queue: str) -> str:
        """Hash: per worker (its hostname), the task names its image registers, as JSON
        `{"tasks": [...], "at": ms}`; the operator shows their union in the pool's
        status.registeredTasks, and admission warns about a task no worker registers."""
        return f"{self.prefix}{REGISTERED_PREFIX}{queue}"

    def queue_key(self, queue: str) -> str:
        """List: kombu's priority-0 list of the queue (kombu adds the same prefix)."""
        return f"{self.prefix}{queue}"

    def records_stream(self) -> str:
        """Stream: the run records (and beat's notices) of this key space."""
        return f"{self.prefix}{RUN_RECORDS_STREAM}"


ROOT = KeySpace()


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"{namespace!r} is not a namespace name (a DNS label)")
    return namespace


def tenant_prefix(namespace: str) -> str:
    """The prefix of every key and channel of a namespace's workers (Redis tenancy)."""
    return f"{TENANT_PREFIX}{check_namespace(namespace)}:"


def key_space(namespace: str) -> KeySpace:
    """The key space of a namespace's workers under Redis tenancy; "" is the root one."""
    return KeySpace(tenant_prefix(namespace)) if namespace else ROOT


run_key = ROOT.run_key
leases_key = ROOT.leases_key
active_key = ROOT.active_key
retries_key = ROOT.retries_key
sweeper_key = ROOT.sweeper_key
stats_key = ROOT.stats_key
deleted_key = ROOT.deleted_key
unclaimed_key = ROOT.unclaimed_key
registered_key = ROOT.registered_key


def run_now_key(uid: str, token: str) -> str:
    """String: the slot a ScheduledTask's run-now token was first acted on at (the
    operator's own key: never in a tenant's key space)."""
    return f"{RUN_NOW_PREFIX}{uid}:{token}"


def tenancy_state_key(namespace: str) -> str:
    """Hash: the operator's record of a namespace's Redis user (password hashes, by pool)."""
    return f"{TENANCY_STATE_PREFIX}{namespace}"


def redbeat_key(namespace: str, name: str, prefix: str = REDBEAT_KEY_PREFIX) -> str:
    """Hash: the redbeat entry of one ScheduledTask (definition and meta)."""
    return f"{prefix}{object_key(namespace, name)}"


def redbeat_schedule_key(prefix: str = REDBEAT_KEY_PREFIX) -> str:
    """Sorted set: redbeat's entry keys scored by next due time."""
    return f"{prefix}:schedule"


def redbeat_lock_key(prefix: str = REDBEAT_KEY_PREFIX) -> str:
    """String: redbeat's HA lock, held by the beat that fires."""
    return f"{prefix}:lock"
