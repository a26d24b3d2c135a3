"""The one module that owns Beatkeeper's celery-redbeat data in Redis.

Data model (redbeat's, plus one field):

- `<prefix><namespace>/<name>`: a hash per ScheduledTask with
  `definition` (EntryDefinition JSON, written by the operator),
  `next` (EntryNext JSON: the slot the score stands for) and
  `meta` (EntryMeta JSON, written by beat when it fires).
- `<prefix>:schedule`: a sorted set of those keys scored by due time
  (slot + jitter, UNIX seconds). An entry with nothing left to fire (suspended,
  or a finished one-off) keeps its hash but has no score.

Every write is one MULTI/EXEC pipeline. The operator rewrites an entry only when
its definition changed (re-saving re-scores from "now", which would drift an
interval schedule); an entry whose hash survived but whose score was lost is
re-scored from its stored `next`, so healing never fires a slot twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import cast

import redis

from beatkeeper_core import contract, keys


class Outcome(Enum):
    UNCHANGED = "unchanged"
    WRITTEN = "written"
    RESCORED = "rescored"


# Beat's write after firing, per entry, only if `next` is still what beat read:
# an entry the operator rewrote meanwhile keeps the operator's version.
_ADVANCE = """
local fired = 0
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local key = KEYS[i]
  if redis.call('HGET', key, 'next') == ARGV[base + 1] then
    redis.call('HSET', key, 'next', ARGV[base + 2], 'meta', ARGV[base + 3])
    if ARGV[base + 4] == '' then
      redis.call('ZREM', ARGV[#ARGV], key)
    else
      redis.call('ZADD', ARGV[#ARGV], ARGV[base + 4], key)
    end
    fired = fired + 1
  end
end
return fired
"""


@dataclass(frozen=True)
class DueEntry:
    """One entry as beat loaded it."""

    name: str
    definition: str | None
    next: str | None
    meta: str | None


@dataclass(frozen=True)
class Advance:
    """Beat's new state for an entry it handled (`expected_next`: the `next` it read)."""

    name: str
    expected_next: str | None
    next: contract.EntryNext
    meta: contract.EntryMeta


@dataclass(frozen=True)
class StoredEntry:
    definition: str | None
    next: contract.EntryNext | None
    score: float | None


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedbeatStore:
    def __init__(self, client: redis.Redis, prefix: str = keys.REDBEAT_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.schedule_key = keys.redbeat_schedule_key(prefix)
        self._advance = client.register_script(_ADVANCE)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def read(self, names: Sequence[str]) -> list[StoredEntry]:
        """Definition, next and score of each entry, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.key(name), "definition", "next")
            pipe.zscore(self.schedule_key, self.key(name))
        replies = pipe.execute()
        entries = []
        for (definition, raw_next), score in zip(replies[::2], replies[1::2], strict=True):
            text = _decode(raw_next)
            upcoming = contract.EntryNext.model_validate_json(text) if text else None
            entries.append(StoredEntry(_decode(definition), upcoming, score))
        return entries

    def upsert_if_changed(
        self, definitions: Sequence[contract.EntryDefinition], now: dt.datetime
    ) -> list[Outcome]:
        """Make each entry match its definition, writing only what differs."""
        stored = self.read([d.name for d in definitions])
        pipe = self.client.pipeline(transaction=True)
        outcomes = [
            self._plan_write(pipe, d, s, now) for d, s in zip(definitions, stored, strict=True)
        ]
        if any(outcome is not Outcome.UNCHANGED for outcome in outcomes):
            pipe.execute()
        return outcomes

    def _plan_write(
        self,
        pipe: redis.client.Pipeline,
        definition: contract.EntryDefinition,
        stored: StoredEntry,
        now: dt.datetime,
    ) -> Outcome:
        key = self.key(definition.name)
        text = definition.model_dump_json()
        if stored.definition == text and stored.next is not None:
            due = stored.next.due
            if due is None or stored.score is not None:
                return Outcome.UNCHANGED
            pipe.zadd(self.schedule_key, {key: due})  # the score alone was lost
            return Outcome.RESCORED
        upcoming = definition.next_for(definition.first_slot(now))
        pipe.hset(key, mapping={"definition": text, "next": upcoming.model_dump_json()})
        if upcoming.due is None:
            pipe.zrem(self.schedule_key, key)
        else:
            pipe.zadd(self.schedule_key, {key: upcoming.due})
        return Outcome.WRITTEN

    def delete(self, names: Iterable[str]) -> None:
        keys = [self.key(name) for name in names]
        if not keys:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*keys)
        pipe.zrem(self.schedule_key, *keys)
        pipe.execute()

    def armed(self) -> int:
        """How many entries the schedule holds (each armed ScheduledTask has one)."""
        return int(self.client.zcard(self.schedule_key))

    def names(self) -> set[str]:
        """Every entry name that has a hash under the prefix (for garbage collection)."""
        names = set()
        for key in self.client.scan_iter(match=f"{self.prefix}*/*", count=1000):
            names.add(_decode(key)[len(self.prefix) :])  # type: ignore[index]
        return names

    def next_of(self, name: str) -> contract.EntryNext | None:
        return self.read([name])[0].next

    # -- beat's side --------------------------------------------------------------

    def due(self, now: dt.datetime, limit: int) -> list[DueEntry]:
        """Entries due at `now` (score <= now), oldest first, with their fields."""
        return self.load(self.due_names(now, limit))

    def due_names(self, until: dt.datetime, limit: int) -> list[str]:
        """Names of entries due by `until`, oldest first (names only: cheap to repeat)."""
        keys = cast(
            list[bytes],
            self.client.zrangebyscore(self.schedule_key, "-inf", until.timestamp(), 0, limit),
        )
        return [(_decode(key) or "")[len(self.prefix) :] for key in keys]

    def load(self, names: Sequence[str]) -> list[DueEntry]:
        if not names:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.key(name), "definition", "next", "meta")
        return [
            DueEntry(name, _decode(definition), _decode(upcoming), _decode(meta))
            for name, (definition, upcoming, meta) in zip(names, pipe.execute(), strict=True)
        ]

    def advance(self, advances: Sequence[Advance]) -> int:
        """Store each entry's next slot and meta; returns how many were still current."""
        if not advances:
            return 0
        keys, args = [], []
        for item in advances:
            keys.append(self.key(item.name))
            score = "" if item.next.due is None else repr(item.next.due)
            args += [
                item.expected_next or "",
                item.next.model_dump_json(),
                item.meta.model_dump_json(),
                score,
            ]
        return int(self._advance(keys=keys, args=[*args, self.schedule_key]))

    def current_next(self, names: Sequence[str]) -> list[str | None]:
        """The `next` field of each entry now (to spot entries rewritten meanwhile)."""
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hget(self.key(name), "next")
        return [_decode(value) for value in pipe.execute()]

    def postpone(self, name: str, until: dt.datetime) -> None:
        """Move an entry beat cannot read out of the way, instead of retrying it hot."""
        self.client.zadd(self.schedule_key, {self.key(name): until.timestamp()}, xx=True)

    def seconds_until_next_due(self, now: dt.datetime) -> float | None:
        first = self.client.zrange(self.schedule_key, 0, 0, withscores=True)
        return float(first[0][1]) - now.timestamp() if first else None
