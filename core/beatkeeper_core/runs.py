"""The run registry: the only code that changes a run's state in Redis.

One hash per run id holds its state, attempt, lease (owner token and expiry) and
envelope; per-queue sorted sets index leases and delayed retries, and a
per-object sorted set marks the runs in flight for concurrency policies. Every
transition is one Lua script, so deciding and writing (and appending the run
record to the stream) happen atomically and in one round trip. Lease expiry is
judged on Redis's clock, so clock skew between worker hosts cannot expire a
live lease. See docs/redis-data-model.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import redis
from redis.commands.core import Script

from beatkeeper_core import keys
from beatkeeper_core.contract import (
    ObjectNotice,
    RunEnvelope,
    RunRecord,
    RunState,
)
from beatkeeper_core.keys import KeySpace

_PRELUDE = """
local FINISHED = {{Succeeded=true, Failed=true, Skipped=true, Missed=true}}
local LEASE_MS, RETENTION_MS, MAXLEN = {lease_ms}, {retention_ms}, {maxlen}
local RUN_PREFIX = '{run_prefix}'
local LEASES_PREFIX = '{leases_prefix}'
local ACTIVE_PREFIX = '{active_prefix}'
local RETRIES_PREFIX = '{retries_prefix}'
local UNCLAIMED_PREFIX = '{unclaimed_prefix}'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: run, leases, active, stream, stats, deleted
# ARGV: run_id, owner, attempt, envelope, queue, mode ('run'|'finish'), final_state,
#       policy, record, missed_record, skipped_record, slot_ms, object,
#       superseded_skipped_record, superseded_failed_record
_CLAIM = """
local run_id, owner, attempt = ARGV[1], ARGV[2], tonumber(ARGV[3])
local envelope, queue, mode, final_state, policy = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local record, missed, skipped = ARGV[9], ARGV[10], ARGV[11]
local slot_ms, object = tonumber(ARGV[12]), ARGV[13]
local superseded_skipped, superseded_failed = ARGV[14], ARGV[15]
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'owner', 'lease_until')
local state = cur[1]
if state and FINISHED[state] then
  redis.call('HINCRBY', KEYS[5], 'dropped_finished', 1)
  return {'dropped', 'finished'}
end
if state and attempt < (tonumber(cur[2]) or 0) then
  redis.call('HINCRBY', KEYS[5], 'dropped_stale', 1)
  return {'dropped', 'stale'}
end
if cur[3] and cur[3] ~= '' and (tonumber(cur[4]) or 0) > now then
  redis.call('HINCRBY', KEYS[5], 'dropped_leased', 1)
  return {'dropped', 'leased'}
end
local deleted = redis.call('GET', KEYS[6])
if deleted and slot_ms <= tonumber(deleted) then
  -- Its ScheduledTask was deleted after this slot: none of its runs start any more.
  -- Nobody reads the object's status now, so there is no record; later copies drop.
  redis.call('HSET', KEYS[1], 'state', 'Failed', 'owner', '', 'lease_until', 0)
  redis.call('PEXPIRE', KEYS[1], RETENTION_MS)
  redis.call('ZREM', KEYS[2], run_id)
  redis.call('ZREM', KEYS[3], run_id)
  redis.call('HINCRBY', KEYS[5], 'dropped_deleted', 1)
  return {'dropped', 'deleted'}
end

-- A delivery reached a worker: from here the run is claimed, finished or dropped.
redis.call('ZREM', UNCLAIMED_PREFIX .. queue, run_id)

local function finish(final, final_record)
  redis.call('HSET', KEYS[1], 'state', final, 'attempt', attempt, 'owner', '',
             'lease_until', 0, 'queue', queue, 'envelope', envelope,
             'slot', slot_ms, 'object', object)
  redis.call('PEXPIRE', KEYS[1], RETENTION_MS)
  redis.call('ZREM', KEYS[2], run_id)
  redis.call('ZREM', KEYS[3], run_id)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', MAXLEN, '*', 'record', final_record)
  return {'finished', final}
end

if mode == 'finish' then
  return finish(final_state, record)
end
-- A run that already started (the owner died) is taken over, never Missed or Skipped.
local started = state == 'Running' or state == 'Retrying'
if missed ~= '' and not started then
  return finish('Missed', missed)
end

local others, newer = {}, false
if policy ~= 'Allow' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, other in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if other ~= run_id then
      local other_slot = tonumber(redis.call('HGET', RUN_PREFIX .. other, 'slot') or '0')
      if other_slot > slot_ms then newer = true else table.insert(others, other) end
    end
  end
end
if newer then
  -- An older slot (redelivered, recovered) never stops, skips or runs beside a newer
  -- run: it is superseded by it.
  if started then return finish('Failed', superseded_failed) end
  return finish('Skipped', superseded_skipped)
end
if policy == 'Forbid' and #others > 0 and not started then
  return finish('Skipped', skipped)
end

local result = {'claimed', started and 'takeover' or 'fresh'}
if policy == 'Replace' then
  for _, other in ipairs(others) do
    local okey = RUN_PREFIX .. other
    local o = redis.call('HMGET', okey, 'state', 'queue', 'envelope')
    if o[1] and not FINISHED[o[1]] then
      -- Failed before it is stopped, so its redeliveries are dropped.
      redis.call('HSET', okey, 'state', 'Failed', 'owner', '', 'lease_until', 0)
      redis.call('PEXPIRE', okey, RETENTION_MS)
      if o[2] then redis.call('ZREM', LEASES_PREFIX .. o[2], other) end
      table.insert(result, o[1])
      table.insert(result, o[3] or '')
    end
    redis.call('ZREM', KEYS[3], other)
  end
end

local until_ms = now + LEASE_MS
redis.call('HSET', KEYS[1], 'state', 'Running', 'attempt', attempt, 'owner', owner,
           'lease_until', until_ms, 'queue', queue, 'envelope', envelope,
           'slot', slot_ms, 'object', object)
redis.call('PEXPIRE', KEYS[1], RETENTION_MS)
redis.call('ZADD', KEYS[2], until_ms, run_id)
-- The object's marker outlives the lease by a lease: a run whose worker died stays
-- in flight for Forbid and Replace until the sweeper recovers it (and re-arms it).
redis.call('ZADD', KEYS[3], until_ms + LEASE_MS, run_id)
redis.call('PEXPIRE', KEYS[3], RETENTION_MS)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', MAXLEN, '*', 'record', record)
return result
"""

# KEYS: run, leases, active, stream, retries
# ARGV: run_id, owner, match ('exact'|'prefix'), attempt, state, record,
#       next_envelope, delay_ms
_SETTLE = """
local run_id, owner, attempt, state = ARGV[1], ARGV[2], tonumber(ARGV[4]), ARGV[5]
local cur = redis.call('HMGET', KEYS[1], 'owner', 'attempt', 'state')
local holder = cur[1] or ''
local owns
if ARGV[3] == 'prefix' then
  owns = holder ~= '' and string.sub(holder, 1, #owner) == owner
else
  owns = holder == owner
end
if not owns or tonumber(cur[2]) ~= attempt or cur[3] ~= 'Running' then
  return 0
end
redis.call('ZREM', KEYS[2], run_id)
if state == 'Retrying' then
  local due = now + tonumber(ARGV[8])
  redis.call('HSET', KEYS[1], 'state', 'Retrying', 'attempt', attempt + 1,
             'owner', '', 'lease_until', 0, 'envelope', ARGV[7])
  redis.call('ZADD', KEYS[5], due, ARGV[7])
  -- Still in flight for Forbid/Replace while it waits, as a CronJob's Job is.
  redis.call('ZADD', KEYS[3], due + LEASE_MS, run_id)
  redis.call('PEXPIRE', KEYS[3], RETENTION_MS)
else
  redis.call('HSET', KEYS[1], 'state', state, 'owner', '', 'lease_until', 0)
  redis.call('ZREM', KEYS[3], run_id)
end
redis.call('PEXPIRE', KEYS[1], RETENTION_MS)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', MAXLEN, '*', 'record', ARGV[6])
return 1
"""

# ARGV: per lease: run_id, owner, queue, object_key
_RENEW = """
local until_ms = now + LEASE_MS
local lost = {}
for i = 1, #ARGV, 4 do
  local run_id = ARGV[i]
  local key = RUN_PREFIX .. run_id
  if redis.call('HGET', key, 'owner') == ARGV[i + 1] then
    redis.call('HSET', key, 'lease_until', until_ms)
    redis.call('ZADD', LEASES_PREFIX .. ARGV[i + 2], until_ms, run_id)
    redis.call('ZADD', ACTIVE_PREFIX .. ARGV[i + 3], until_ms + LEASE_MS, run_id)
  else
    table.insert(lost, run_id)
  end
end
return lost
"""

# KEYS: leases; ARGV: rearm_ms, limit
_RECOVER = """
local out = {}
for _, run_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now,
                                   'LIMIT', 0, tonumber(ARGV[2]))) do
  local key = RUN_PREFIX .. run_id
  local h = redis.call('HMGET', key, 'state', 'envelope', 'lease_until', 'object')
  if h[1] ~= 'Running' or not h[2] then
    redis.call('ZREM', KEYS[1], run_id)
  elseif (tonumber(h[3]) or 0) > now then
    redis.call('ZADD', KEYS[1], h[3], run_id)
  else
    -- Release the dead owner's lease so the republished delivery can claim it;
    -- re-arm, so a delivery lost again is republished again, and keep the run in
    -- flight for its object's concurrency policy until it runs again.
    redis.call('HSET', key, 'owner', '', 'lease_until', 0)
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), run_id)
    if h[4] then redis.call('ZADD', ACTIVE_PREFIX .. h[4], now + tonumber(ARGV[1]), run_id) end
    table.insert(out, h[2])
  end
end
return out
"""

# KEYS: retries; ARGV: limit
_DUE_RETRIES = """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""

# KEYS: retries, unclaimed; ARGV: count n, n published envelopes, their n run ids
# Promoted retries leave the retries set and wait to be claimed, like a new run.
_PROMOTED = """
local n = tonumber(ARGV[1])
for i = 1, n do
  redis.call('ZREM', KEYS[1], ARGV[1 + i])
  redis.call('ZADD', KEYS[2], now, ARGV[1 + n + i])
end
return n
"""

# KEYS: unclaimed; ARGV: grace_ms, limit
# A run published (or promoted) more than grace ago that no worker has claimed yet
# lost its message: kombu's BRPOP removes a message before the worker has it, so a
# connection cut in between loses it (kombu#305). Republish it; the claim drops the
# copy if the first one turns up after all. Each republish doubles the wait (at
# most 16 x grace), so a long legitimate backlog is not flooded with copies.
_UNCLAIMED = """
local grace = tonumber(ARGV[1])
local out = {}
for _, run_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - grace,
                                   'LIMIT', 0, tonumber(ARGV[2]))) do
  local key = RUN_PREFIX .. run_id
  local h = redis.call('HMGET', key, 'state', 'envelope', 'owner')
  if (h[1] == 'Pending' or h[1] == 'Retrying') and h[2] and (h[3] or '') == '' then
    local times = redis.call('HINCRBY', key, 'republished', 1)
    local factor = 2 ^ math.min(times, 4)
    redis.call('ZADD', KEYS[1], now + grace * (factor - 1), run_id)
    table.insert(out, h[2])
  else
    redis.call('ZREM', KEYS[1], run_id)
  end
end
return out
"""

# KEYS: run, stream; ARGV: attempt, envelope, queue, record, slot_ms, object, run_id
_PENDING = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'Pending', 'attempt', ARGV[1], 'owner', '',
           'lease_until', 0, 'queue', ARGV[3], 'envelope', ARGV[2],
           'slot', ARGV[5], 'object', ARGV[6])
redis.call('PEXPIRE', KEYS[1], RETENTION_MS)
redis.call('ZADD', UNCLAIMED_PREFIX .. ARGV[3], now, ARGV[7])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', MAXLEN, '*', 'record', ARGV[4])
return 1
"""

# KEYS: stream, then per run: run, queue
# ARGV: per run: attempt, envelope, queue name, record, message, slot_ms, object, run_id
# `_PENDING` plus the broker message for many runs: beat's batch, one call.
_PUBLISH_BATCH = """
local fresh = {}
for i = 2, #KEYS, 2 do
  local base = (i - 2) / 2 * 8
  local is_new = 0
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 'state', 'Pending', 'attempt', ARGV[base + 1], 'owner', '',
               'lease_until', 0, 'queue', ARGV[base + 3], 'envelope', ARGV[base + 2],
               'slot', ARGV[base + 6], 'object', ARGV[base + 7])
    redis.call('PEXPIRE', KEYS[i], RETENTION_MS)
    redis.call('ZADD', UNCLAIMED_PREFIX .. ARGV[base + 3], now, ARGV[base + 8])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', MAXLEN, '*', 'record', ARGV[base + 4])
    is_new = 1
  end
  redis.call('LPUSH', KEYS[i + 1], ARGV[base + 5])
  fresh[#fresh + 1] = is_new
end
return fresh
"""

# KEYS: stream; ARGV: per run: run_id, record
# Cancel: each run not yet finished becomes Failed with its record, its lease and
# markers go, and a retry it waited for is withdrawn. Its worker finds the lease
# gone at the next renewal and stops it, as after a Replace.
_CANCEL = """
local out = {}
for i = 1, #ARGV, 2 do
  local run_id = ARGV[i]
  local key = RUN_PREFIX .. run_id
  local h = redis.call('HMGET', key, 'state', 'queue', 'envelope', 'object')
  if h[1] and not FINISHED[h[1]] then
    redis.call('HSET', key, 'state', 'Failed', 'owner', '', 'lease_until', 0)
    redis.call('PEXPIRE', key, RETENTION_MS)
    if h[2] then
      redis.call('ZREM', LEASES_PREFIX .. h[2], run_id)
      if h[1] == 'Retrying' and h[3] then redis.call('ZREM', RETRIES_PREFIX .. h[2], h[3]) end
    end
    if h[4] then redis.call('ZREM', ACTIVE_PREFIX .. h[4], run_id) end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', MAXLEN, '*', 'record', ARGV[i + 1])
    table.insert(out, run_id)
  end
end
return out
"""

# KEYS: lock; ARGV: token, ttl_ms
_HOLD_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _render(body: str, *, lease_ms: int, retention_ms: int, maxlen: int, space: KeySpace) -> str:
    # Settings go into the script text, so each call carries only per-run
    # arguments: redis-py's packing costs more per argument than Redis does.
    prelude = _PRELUDE.format(
        lease_ms=lease_ms,
        retention_ms=retention_ms,
        maxlen=maxlen,
        run_prefix=space.run_key(""),
        leases_prefix=space.leases_key(""),
        active_prefix=space.active_key(""),
        retries_prefix=space.retries_key(""),
        unclaimed_prefix=space.unclaimed_key(""),
    )
    return prelude + body


ClaimStatus = Literal["claimed", "dropped", "finished"]


@dataclass(frozen=True)
class Replaced:
    """A run that a Replace claim marked Failed; its record is still to be written."""

    envelope: RunEnvelope
    was_retrying: bool


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    detail: str  # fresh|takeover; finished|stale|leased; the final state
    replaced: tuple[Replaced, ...] = field(default=())


@dataclass(frozen=True)
class HeldLease:
    """What the renewal script needs to extend one lease."""

    run_id: str
    owner: str
    queue: str
    object_key: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


@dataclass(frozen=True)
class EncodedRun:
    """A run ready for `publish_batch`: every field already encoded (ahead of time)."""

    run_id: str
    attempt: int
    queue: str
    envelope: str  # RunEnvelope JSON, defaults left out
    record: str  # the Pending RunRecord, as the stream stores it
    message: str  # the broker message
    slot_ms: int
    object_key: str

    @classmethod
    def of(cls, envelope: RunEnvelope, queue: str, record: RunRecord, message: str) -> EncodedRun:
        return cls(
            run_id=envelope.run_id,
            attempt=envelope.attempt,
            queue=queue,
            envelope=envelope.model_dump_json(exclude_defaults=True),
            record=_encode(record),
            message=message,
            slot_ms=slot_ms(envelope),
            object_key=envelope.object_key,
        )


# Defaults of the worker's (and beat's) settings of the same names.
DEFAULT_LEASE_SECONDS = 15.0  # BEATKEEPER_LEASE_SECONDS
DEFAULT_RETENTION_SECONDS = 7 * 86400.0  # BEATKEEPER_RUN_RETENTION_SECONDS
DEFAULT_RECORDS_MAXLEN = 100_000  # BEATKEEPER_RECORDS_MAXLEN


class RunRegistry:
    """Claims, leases, outcomes and retry indexes of runs, one script per transition.

    Publishers (beat, the operator) claim nothing, so they keep the default lease.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        records_maxlen: int = DEFAULT_RECORDS_MAXLEN,
        space: KeySpace = keys.ROOT,
    ) -> None:
        self.client = client
        self.keys = space
        self.lease_seconds = lease_seconds
        self._lease_ms = _ms(lease_seconds)
        self._maxlen = records_maxlen
        self.stream = space.records_stream()
        constants: dict[str, int] = {
            "lease_ms": self._lease_ms,
            "retention_ms": _ms(retention_seconds),
            "maxlen": records_maxlen,
        }

        def script(body: str) -> Script:
            return client.register_script(_render(body, space=space, **constants))

        self._claim = script(_CLAIM)
        self._settle = script(_SETTLE)
        self._renew = script(_RENEW)
        self._recover = script(_RECOVER)
        self._due_retries = script(_DUE_RETRIES)
        self._promoted = script(_PROMOTED)
        self._unclaimed = script(_UNCLAIMED)
        self._pending = script(_PENDING)
        self._publish_batch = script(_PUBLISH_BATCH)
        self._cancel = script(_CANCEL)
        self._retention_ms = _ms(retention_seconds)
        self._hold_lock = client.register_script(_HOLD_LOCK)
        self._release_lock = client.register_script(_RELEASE_LOCK)

    def mark_pending(self, envelope: RunEnvelope, queue: str, record: RunRecord) -> bool:
        """Register a newly published run; False when the run id is already known."""
        return self.mark_pending_many([(envelope, queue, record)])[0]

    def mark_pending_many(self, runs: Sequence[tuple[RunEnvelope, str, RunRecord]]) -> list[bool]:
        """`mark_pending` for many runs in one round trip (beat fires thousands at once)."""
        pipe = self.client.pipeline(transaction=False)
        for envelope, queue, record in runs:
            self.add_pending(pipe, envelope, queue, record)
        return [bool(reply) for reply in pipe.execute()]

    def publish_batch(self, runs: Sequence[EncodedRun]) -> list[bool]:
        """Register each run Pending (once per run id) and LPUSH its broker message.

        One call for the whole batch: 10,000 runs due in the same second cost
        ten calls, not 20,000 commands. The queue key is the queue name (kombu's
        key for priority 0), in the registry's key space. Returns True for each run id that was new.
        """
        if not runs:
            return []
        keys_: list[str] = [self.stream]
        args: list[str | int] = []
        for run in runs:
            keys_ += [self.keys.run_key(run.run_id), self.keys.queue_key(run.queue)]
            args += [
                run.attempt,
                run.envelope,
                run.queue,
                run.record,
                run.message,
                run.slot_ms,
                run.object_key,
                run.run_id,
            ]
        return [bool(reply) for reply in self._publish_batch(keys_, args)]

    def add_pending(
        self, pipe: redis.client.Pipeline, envelope: RunEnvelope, queue: str, record: RunRecord
    ) -> None:
        """Queue `mark_pending` on the caller's pipeline; its reply is 1 when new."""
        keys_ = [self.keys.run_key(envelope.run_id), self.stream]
        args: list[str | int] = [
            envelope.attempt,
            envelope.model_dump_json(exclude_defaults=True),
            queue,
            _encode(record),
            slot_ms(envelope),
            envelope.object_key,
            envelope.run_id,
        ]
        self._pending(keys_, args, client=pipe)

    def claim(
        self,
        envelope: RunEnvelope,
        queue: str,
        owner: str,
        running: RunRecord,
        *,
        missed: RunRecord | None = None,
        skipped: RunRecord | None = None,
        superseded: tuple[RunRecord, RunRecord] | None = None,
    ) -> Claim:
        """Take the run's lease, or say why this delivery must not execute.

        `superseded`: the Skipped and Failed records for when a newer run of the
        object is active (Skipped if this run never started, Failed if it did).
        """
        return self._call_claim(
            envelope,
            queue,
            owner=owner,
            mode="run",
            record=running,
            missed=missed,
            skipped=skipped,
            superseded=superseded,
        )

    def finish(self, envelope: RunEnvelope, queue: str, record: RunRecord) -> Claim:
        """Finish a run without executing it (refused), unless a delivery must be dropped."""
        return self._call_claim(
            envelope,
            queue,
            owner="",
            mode="finish",
            record=record,
            missed=None,
            skipped=None,
            superseded=None,
        )

    def _call_claim(
        self,
        envelope: RunEnvelope,
        queue: str,
        *,
        owner: str,
        mode: str,
        record: RunRecord,
        missed: RunRecord | None,
        skipped: RunRecord | None,
        superseded: tuple[RunRecord, RunRecord] | None,
    ) -> Claim:
        keys_ = [
            self.keys.run_key(envelope.run_id),
            self.keys.leases_key(queue),
            self.keys.active_key(envelope.object_key),
            self.stream,
            self.keys.stats_key(queue),
            self.keys.deleted_key(envelope.object_key),
        ]
        superseded_skipped, superseded_failed = superseded or (record, record)
        args: list[str | int] = [
            envelope.run_id,
            owner,
            envelope.attempt,
            envelope.model_dump_json(exclude_defaults=True),
            queue,
            mode,
            record.state.value,
            envelope.policy.concurrency_policy.value,
            _encode(record),
            _encode(missed) if missed else "",
            _encode(skipped) if skipped else "",
            slot_ms(envelope),
            envelope.object_key,
            _encode(superseded_skipped),
            _encode(superseded_failed),
        ]
        return _parse_claim(self._claim(keys_, args))

    def settle(
        self,
        envelope: RunEnvelope,
        queue: str,
        owner: str,
        record: RunRecord,
        *,
        retry: tuple[RunEnvelope, float] | None = None,
        owner_prefix: bool = False,
    ) -> bool:
        """Write an attempt's outcome if `owner` still holds the lease; False otherwise.

        `retry` is the next attempt's envelope and its delay in seconds.
        `owner_prefix` lets the worker's main process settle for a pool child
        it killed, knowing only the `<host>:<pid>:` start of the child's token.
        """
        next_envelope, delay = retry if retry else (None, 0.0)
        keys_ = [
            self.keys.run_key(envelope.run_id),
            self.keys.leases_key(queue),
            self.keys.active_key(envelope.object_key),
            self.stream,
            self.keys.retries_key(queue),
        ]
        args: list[str | int] = [
            envelope.run_id,
            owner,
            "prefix" if owner_prefix else "exact",
            envelope.attempt,
            record.state.value,
            _encode(record),
            next_envelope.model_dump_json(exclude_defaults=True) if next_envelope else "",
            int(delay * 1000),
        ]
        return bool(self._settle(keys_, args))

    def renew(self, leases: Iterable[HeldLease]) -> list[str]:
        """Extend every lease still owned; return the run ids whose lease was lost."""
        args: list[str] = []
        for lease in leases:
            args += [lease.run_id, lease.owner, lease.queue, lease.object_key]
        if not args:
            return []
        return [_text(run_id) for run_id in self._renew([], args)]

    def recover_expired(self, queue: str, *, rearm_seconds: float, limit: int = 100) -> list[str]:
        """Envelopes (JSON) of runs whose lease expired without an outcome."""
        found = self._recover([self.keys.leases_key(queue)], [_ms(rearm_seconds), limit])
        return [_text(item) for item in found]

    def due_retries(self, queue: str, limit: int = 100) -> list[str]:
        """Next-attempt envelopes (JSON) whose delay has passed."""
        return [_text(item) for item in self._due_retries([self.keys.retries_key(queue)], [limit])]

    def forget_retries(self, queue: str, envelopes: Sequence[str]) -> None:
        """Drop retry envelopes (unreadable ones) from the index without publishing."""
        if envelopes:
            self.client.zrem(self.keys.retries_key(queue), *envelopes)

    def promoted(self, queue: str, published: Sequence[tuple[str, str]]) -> None:
        """Retries published, as (envelope JSON, run id): out of the retries set,
        into the unclaimed one."""
        if published:
            args: list[str | int] = [len(published)]
            args += [envelope for envelope, _ in published]
            args += [run_id for _, run_id in published]
            self._promoted([self.keys.retries_key(queue), self.keys.unclaimed_key(queue)], args)

    def unclaimed(self, queue: str, *, grace_seconds: float, limit: int = 100) -> list[str]:
        """Envelopes (JSON) of runs published over `grace_seconds` ago and never claimed."""
        found = self._unclaimed([self.keys.unclaimed_key(queue)], [_ms(grace_seconds), limit])
        return [_text(item) for item in found]

    def append_notice(self, notice: ObjectNotice) -> None:
        """A notice about an object, on the run-record stream (see `ObjectNotice`)."""
        self.client.xadd(
            self.stream,
            notice.to_stream_fields(),  # type: ignore[arg-type]
            maxlen=self._maxlen,
            approximate=True,
        )

    def append(self, records: Iterable[RunRecord]) -> None:
        """XADD records that no script wrote (runs a Replace claim stopped)."""
        with self.client.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(
                    self.stream,
                    record.to_stream_fields(),  # type: ignore[arg-type]
                    maxlen=self._maxlen,
                    approximate=True,
                )
            pipe.execute()

    def active(self, object_key: str) -> list[tuple[str, RunEnvelope | None, str]]:
        """(run id, envelope, state) of every run of the object in flight."""
        found = []
        members: list[bytes] = self.client.zrange(self.keys.active_key(object_key), 0, -1)  # type: ignore[assignment]
        for member in members:
            run = _text(member)
            state, raw = self.client.hmget(self.keys.run_key(run), ["state", "envelope"])
            envelope = RunEnvelope.model_validate_json(raw) if raw else None
            found.append((run, envelope, _text(state) if state else ""))
        return found

    def cancel(self, runs: Sequence[tuple[str, RunRecord]]) -> list[str]:
        """Fail these runs (with their records) unless finished; returns those cancelled."""
        args: list[str] = []
        for run, record in runs:
            args += [run, _encode(record)]
        if not args:
            return []
        return [_text(run) for run in self._cancel([self.stream], args)]

    def mark_deleted(self, object_key: str, at: dt.datetime) -> None:
        """From now on no run of the object whose slot is not after `at` starts."""
        self.client.set(
            self.keys.deleted_key(object_key), int(at.timestamp() * 1000), px=self._retention_ms
        )

    def hold_lock(self, key: str, token: str, ttl_seconds: float) -> bool:
        """Take or extend a short lock; True while `token` holds it."""
        return bool(self._hold_lock([key], [token, _ms(ttl_seconds)]))

    def release_lock(self, key: str, token: str) -> None:
        self._release_lock([key], [token])


def _encode(record: RunRecord) -> str:
    return record.to_stream_fields()["record"]


def slot_ms(envelope: RunEnvelope) -> int:
    """The run's slot in ms since the epoch: newer slots compare greater in the scripts."""
    return int(envelope.slot.timestamp() * 1000)


def _parse_claim(raw: Sequence[bytes | str]) -> Claim:
    status, detail, *rest = (_text(item) for item in raw)
    replaced = tuple(
        Replaced(
            envelope=RunEnvelope.model_validate_json(envelope),
            was_retrying=state == RunState.RETRYING.value,
        )
        for state, envelope in zip(rest[::2], rest[1::2], strict=True)
        if envelope
    )
    return Claim(status=status, detail=detail, replaced=replaced)  # type: ignore[arg-type]
