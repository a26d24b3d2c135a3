"""The backlog adapter: what waits for one pool, measured in Redis in one round trip.

Kombu's Redis transport keeps a queue as one list per priority level (the
queue's name for priority 0, `<queue>\\x06\\x16<n>` for the others: kombu's
`_q_for_pri`), and moves each delivered message into the `unacked` hash (JSON
`[message, exchange, routing_key]`) until it is acked. Beatkeeper's worker
adds the leases set (runs running now) and the delayed-retries set of each
queue (docs/redis-data-model.md).

Per pool, one pipeline reads every priority list, the leases and the retries.
The `unacked` hash is shared by every queue of the Redis and not indexed by
queue, so counting one queue's entries means reading all of them. A Lua
script does it server-side and returns only a count per routing key (no
message crosses the network), and its result serves every pool for
`tally_max_age` seconds: the cost is one scan of the hash per period for the
whole operator, not one per pool and poll. The hash stays small anyway: a
worker holds at most concurrency x prefetch unacked messages.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable

import redis

from beatkeeper.operator.autoscaler import BacklogSample, Upcoming
from beatkeeper_worker import keys
from beatkeeper_worker.keys import KeySpace

PRIORITY_SEP = "\x06\x16"
# kombu maps a message's priority onto its priority_steps (default 0, 3, 6, 9);
# a transport configured with other steps may use any of 1..9.
PRIORITIES = range(1, 10)
UNACKED = "unacked"

# Entries end with `, "<exchange>", "<routing key>"]`; only the tail is read.
_TALLY = """
local counts = {}
for _, entry in ipairs(redis.call('HVALS', KEYS[1])) do
  local queue = string.match(string.sub(entry, -600), '"([^"]*)"%s*%]%s*$')
  if queue then counts[queue] = (counts[queue] or 0) + 1 end
end
local flat = {}
for queue, n in pairs(counts) do
  flat[#flat + 1] = queue
  flat[#flat + 1] = n
end
return flat
"""


def queue_lists(queue: str, space: KeySpace = keys.ROOT) -> list[str]:
    """Every list kombu may keep the queue's messages in (kombu's global key prefix,
    under Redis tenancy, is the key space's)."""
    first = space.queue_key(queue)
    return [first, *(f"{first}{PRIORITY_SEP}{n}" for n in PRIORITIES)]


def _retry_upcoming(entries: list[tuple[bytes, float]]) -> Upcoming | None:
    if not entries:
        return None
    member, score = entries[0]
    try:
        run = str(json.loads(member).get("run_id", "a run"))
    except (ValueError, AttributeError):
        run = "a run"
    return Upcoming(dt.datetime.fromtimestamp(score / 1000, dt.UTC), f"retry of {run}")


class BacklogProbe:
    def __init__(
        self,
        client: redis.Redis,
        *,
        tally_max_age: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.tally_max_age = tally_max_age
        self._monotonic = monotonic
        self._script = client.register_script(_TALLY)
        self._lock = threading.Lock()
        # Per key space (one `unacked` hash each): counts per routing key, and when.
        self._tally: dict[str, dict[str, int]] = {}
        self._tallied_at: dict[str, float] = {}

    def measure(self, queue: str, now: dt.datetime, space: KeySpace = keys.ROOT) -> BacklogSample:
        """Queued, unacked, leased and due-retry counts of `queue`; raises redis.RedisError."""
        lists = queue_lists(queue, space)
        refresh = self._tally_stale(space.prefix)
        with self.client.pipeline(transaction=False) as pipe:
            for key in lists:
                pipe.llen(key)
            pipe.zcard(space.leases_key(queue))
            pipe.zcount(space.retries_key(queue), "-inf", int(now.timestamp() * 1000))
            pipe.zrange(space.retries_key(queue), 0, 0, withscores=True)
            if refresh:
                self._script(keys=[space.prefix + UNACKED], client=pipe)
            results = pipe.execute()
        if refresh:
            self._store_tally(space.prefix, results[-1])
        lengths, rest = results[: len(lists)], results[len(lists) :]
        return BacklogSample(
            queued=sum(int(n) for n in lengths),
            unacked=self._unacked(space.prefix, queue),
            active=int(rest[0]),
            retries_due=int(rest[1]),
            next_retry=_retry_upcoming(rest[2]),
        )

    def registered(self, queue: str, space: KeySpace = keys.ROOT) -> tuple[str, ...] | None:
        """The task names the pool's workers announced (the union), or None when no
        worker of the queue has announced any; raises redis.RedisError."""
        entries = self.client.hgetall(space.registered_key(queue))
        if not entries:
            return None
        names: set[str] = set()
        for value in entries.values():
            try:
                names.update(str(name) for name in json.loads(value).get("tasks", ()))
            except (ValueError, AttributeError, TypeError):
                continue  # one worker's unreadable entry; the others still count
        return tuple(sorted(names))

    def _tally_stale(self, prefix: str) -> bool:
        with self._lock:
            last = self._tallied_at.get(prefix)
        return last is None or self._monotonic() - last >= self.tally_max_age

    def _store_tally(self, prefix: str, flat: list[bytes | int]) -> None:
        tally = {
            (name.decode() if isinstance(name, bytes) else str(name)): int(count)
            for name, count in zip(flat[::2], flat[1::2], strict=True)
        }
        with self._lock:
            self._tally[prefix], self._tallied_at[prefix] = tally, self._monotonic()

    def _unacked(self, prefix: str, queue: str) -> int:
        with self._lock:
            return self._tally.get(prefix, {}).get(queue, 0)
