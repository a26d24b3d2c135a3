"""The backlog adapter: what waits for one pool, measured in Redis in one round trip.

Kombu's Redis transport keeps a queue as one list per priority step and moves each
delivered message into its `unacked` hash (JSON `[message, exchange, routing_key]`)
until it is acked. Where those are is kombu's to say: `QueueLayout` asks the channel
of the operator's broker app (the same transport options as the workers') for the list
of each priority step (`Channel._q_for_pri` over its `priority_steps`) and the name of
the unacked hash, so a transport configured otherwise is measured as it is. Beatkeeper's
worker adds the leases set (runs running now) and the delayed-retries set of each queue
(docs/redis-data-model.md). Kombu itself offers a queue's size (`Channel._size`, one
round trip per queue) but no count of one queue's unacked messages, so the probe reads
the lists itself, in the pipeline it needs anyway.

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
from typing import Any

import redis

from beatkeeper.operator.autoscaler import BacklogSample, Upcoming
from beatkeeper_core import keys
from beatkeeper_core.keys import KeySpace

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


class QueueLayout:
    """kombu's names for a queue's keys, from a channel of the broker app's transport.

    Under Redis tenancy kombu puts its `global_keyprefix` (the key space's prefix)
    before each name, as `KeySpace` does for Beatkeeper's own keys.
    """

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    @classmethod
    def of(cls, app: Any) -> QueueLayout:
        """Opens a connection of `app` (kombu's channel pings Redis): raises redis errors."""
        connection = app.connection_for_read()
        try:
            return cls(connection.default_channel)
        except Exception:
            connection.release()
            raise

    def lists(self, queue: str, space: KeySpace = keys.ROOT) -> list[str]:
        """Every list kombu keeps the queue's messages in, one per priority step."""
        channel = self._channel
        names = dict.fromkeys(channel._q_for_pri(queue, step) for step in channel.priority_steps)
        return [f"{space.prefix}{name}" for name in names]

    def unacked(self, space: KeySpace = keys.ROOT) -> str:
        return f"{space.prefix}{self._channel.unacked_key}"

    def close(self) -> None:
        self._channel.connection.client.release()


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
        app: Any,
        *,
        tally_max_age: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`app`: the Celery app of the broker, whose transport names the queues' keys."""
        self.client = client
        self.app = app
        self._layout: QueueLayout | None = None
        self.tally_max_age = tally_max_age
        self._monotonic = monotonic
        self._script = client.register_script(_TALLY)
        self._lock = threading.Lock()
        # Per key space (one `unacked` hash each): counts per routing key, and when.
        self._tally: dict[str, dict[str, int]] = {}
        self._tallied_at: dict[str, float] = {}

    def measure(self, queue: str, now: dt.datetime, space: KeySpace = keys.ROOT) -> BacklogSample:
        """Queued, unacked, leased and due-retry counts of `queue`; raises redis.RedisError."""
        layout = self.layout()
        lists = layout.lists(queue, space)
        refresh = self._tally_stale(space.prefix)
        with self.client.pipeline(transaction=False) as pipe:
            for key in lists:
                pipe.llen(key)
            pipe.zcard(space.leases_key(queue))
            pipe.zcount(space.retries_key(queue), "-inf", int(now.timestamp() * 1000))
            pipe.zrange(space.retries_key(queue), 0, 0, withscores=True)
            if refresh:
                self._script(keys=[layout.unacked(space)], client=pipe)
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

    def layout(self) -> QueueLayout:
        """kombu's names, from a channel opened on first use (Redis may come up later)."""
        with self._lock:
            if self._layout is None:
                self._layout = QueueLayout.of(self.app)
            return self._layout

    def close(self) -> None:
        with self._lock:
            if self._layout is not None:
                self._layout.close()
                self._layout = None

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
