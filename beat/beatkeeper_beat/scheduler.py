"""Beatkeeper's Celery beat scheduler: redbeat's data model and lock, Beatkeeper's tick.

Run as `beatkeeper beat` (celery beat with `-S beatkeeper_beat.scheduler:BeatkeeperScheduler`).
Differences from stock redbeat that users rely on:

- Due entries are loaded in batches (one ZRANGEBYSCORE, one pipelined HMGET per
  batch), not one HGET per entry.
- The loop never sleeps longer than `poll_seconds` (default 0.2 s), so an entry
  the operator writes fires on time instead of after `max_loop_interval`.
- The HA lock times out in seconds (default 10 s), so a standby beat takes over
  quickly; a beat that finds its lock taken stops firing and exits.
- Entries carry Beatkeeper's own schedule (cron in an IANA zone, DST-correct),
  the slot of each run goes into its envelope, and catch-up after downtime
  follows the entry's policy (see `beatkeeper_core.firing`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis

from beatkeeper_beat import metrics
from beatkeeper_beat.metrics import BeatMetrics
from beatkeeper_beat.settings import BeatSettings
from beatkeeper_core import broker, contract, firing
from beatkeeper_core.publish import prepare_runs, push_runs
from beatkeeper_core.redbeat import Advance, DueEntry, RedbeatStore
from beatkeeper_core.runs import EncodedRun, RunRegistry

logger = logging.getLogger(__name__)
_UNREADABLE_RETRY = dt.timedelta(seconds=60)
_PUSH_ENTRIES = 500  # entries checked, published and advanced per round
_HORIZON_LIMIT = 100_000  # entries looked at per tick; the rest wait for the next tick


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(
    entry: DueEntry,
) -> tuple[contract.EntryDefinition, contract.EntryNext, contract.EntryMeta]:
    if entry.definition is None or entry.next is None:
        raise ValueError("entry has no definition or next slot")
    meta = (
        contract.EntryMeta.model_validate_json(entry.meta) if entry.meta else contract.EntryMeta()
    )
    return (
        contract.EntryDefinition.model_validate_json(entry.definition),
        contract.EntryNext.model_validate_json(entry.next),
        meta,
    )


def _missed(
    definition: contract.EntryDefinition, slot: dt.datetime, now: dt.datetime
) -> contract.RunRecord:
    envelope = contract.RunEnvelope.for_slot(
        definition.namespace,
        definition.object_name,
        slot,
        definition.task,
        definition.policy,
        trigger="catch-up",
    )
    return contract.RunRecord.of(
        envelope,
        contract.RunState.MISSED,
        now,
        attempt=0,
        completion_time=now,
        reason="MissedWhileDown",
        message=(
            "slot passed while beat or the workers were down; catchUp "
            f"(maxRuns {definition.catch_up.max_runs}, windowSeconds "
            f"{definition.catch_up.window_seconds}) did not run it"
        ),
    )


@dataclass
class _Prepared:
    """One due entry, planned and encoded before its due time."""

    entry: DueEntry
    due: float
    runs: list[EncodedRun]
    missed: list[contract.RunRecord]
    advance: Advance
    fires: list[tuple[str, float]]  # each run's trigger and due time, for the metrics
    namespace: str = ""  # the ScheduledTask's: its key space under Redis tenancy


class Firer:
    """Fires due entries: publish runs, record Missed slots, advance entries.

    Entries due within `lookahead` seconds are planned and their messages
    encoded ahead of time, so at the due second only one pipelined round trip
    per batch is left: 10,000 entries due together go out within a second.
    """

    def __init__(
        self,
        app: Any,
        store: RedbeatStore,
        registries: broker.Registries,
        batch: int,
        *,
        lookahead: float = 5.0,
        metrics: BeatMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.registries = registries
        self.app = app
        self.store = store
        self.batch = batch
        self.lookahead = dt.timedelta(seconds=lookahead)
        self.prepared: dict[str, _Prepared] = {}

    def fire_due(self, now: dt.datetime) -> int:
        """Publish what is due, then prepare what falls due soon, batch by batch."""
        published = self._push(now)
        names = self.store.due_names(now + self.lookahead, _HORIZON_LIMIT)
        fresh = [name for name in names if name not in self.prepared]
        for start in range(0, len(fresh), self.batch):
            for entry in self.store.load(fresh[start : start + self.batch]):
                self._prepare(entry, now)
            now = utcnow()  # preparing takes time: push whatever fell due meanwhile
            published += self._push(now)
        return published

    def seconds_until_work(self, now: dt.datetime) -> float | None:
        """Until the next prepared entry is due, or an unprepared one enters the look-ahead."""
        waits = [p.due - now.timestamp() for p in self.prepared.values()]
        upcoming = self.store.seconds_until_next_due(now)
        if upcoming is not None and upcoming > self.lookahead.total_seconds():
            waits.append(upcoming - self.lookahead.total_seconds())
        return min(waits) if waits else None

    def _prepare(self, entry: DueEntry, now: dt.datetime) -> None:
        try:
            definition, upcoming, meta = _parse(entry)
        except (ValidationError, ValueError) as error:
            logger.error("unreadable redbeat entry %s: %s", entry.name, error)
            self.store.postpone(entry.name, now + _UNREADABLE_RETRY)
            return
        try:
            self._plan(entry, definition, upcoming, meta, now)
        except Exception as error:  # one entry's trouble must not stop the others
            logger.exception("planning redbeat entry %s failed; it waits", entry.name)
            self.store.postpone(entry.name, now + _UNREADABLE_RETRY)
            self._report(definition, now, error)

    def _report(
        self, definition: contract.EntryDefinition, now: dt.datetime, error: Exception
    ) -> None:
        """A notice on the stream: the operator turns it into a Warning event on the object."""
        notice = contract.ObjectNotice(
            namespace=definition.namespace,
            name=definition.object_name,
            reason="EntryPlanningFailed",
            message=(
                f"beat cannot plan this schedule's next run ({type(error).__name__}: "
                f"{error}); it tries again in {_UNREADABLE_RETRY.total_seconds():.0f} s"
            )[: contract.MESSAGE_LIMIT],
            time=now,
        )
        try:
            self._registry(definition.namespace).append_notice(notice)
        except redis.RedisError:
            logger.warning("could not report the failed entry %s", definition.name)

    def _plan(
        self,
        entry: DueEntry,
        definition: contract.EntryDefinition,
        upcoming: contract.EntryNext,
        meta: contract.EntryMeta,
        now: dt.datetime,
    ) -> None:
        due = upcoming.due if upcoming.due is not None else now.timestamp()
        at = max(now, dt.datetime.fromtimestamp(due, dt.UTC))
        plan = firing.plan_fire(definition, upcoming, meta, at)
        envelopes = [_envelope(definition, slot, trigger) for slot, trigger in plan.runs]
        runs = [(envelope, definition.queue) for envelope in envelopes]
        self.prepared[entry.name] = _Prepared(
            entry=entry,
            due=due,
            runs=prepare_runs(self.app, runs, at),
            missed=[_missed(definition, slot, at) for slot in plan.missed],
            advance=Advance(entry.name, entry.next, plan.next, plan.meta),
            fires=[(e.trigger, e.due.timestamp()) for e in envelopes],
            namespace=definition.namespace,
        )

    def _registry(self, namespace: str) -> RunRegistry:
        """Where a namespace's runs go: its own key space under Redis tenancy."""
        return self.registries.for_namespace(namespace)

    def _push(self, now: dt.datetime) -> int:
        ready = [p for p in self.prepared.values() if p.due <= now.timestamp()]
        for item in ready:
            del self.prepared[item.entry.name]
        return sum(
            self._push_chunk(ready[start : start + _PUSH_ENTRIES])
            for start in range(0, len(ready), _PUSH_ENTRIES)
        )

    def _push_chunk(self, chunk: list[_Prepared]) -> int:
        # An entry the operator rewrote since it was prepared (edited, suspended)
        # is dropped here and prepared afresh next tick.
        current = self.store.current_next([p.entry.name for p in chunk])
        chunk = [p for p, text in zip(chunk, current, strict=True) if text == p.entry.next]
        # Publish before advancing: a crash in between republishes (the worker
        # drops the duplicate run id) instead of losing the slot.
        spaces: dict[str, list[_Prepared]] = {}
        for item in chunk:
            spaces.setdefault(self.registries.space(item.namespace).prefix, []).append(item)
        runs = missed = 0
        for items in spaces.values():
            registry = self._registry(items[0].namespace)
            encoded = [run for item in items for run in item.runs]
            push_runs(registry, encoded)
            records = [record for item in items for record in item.missed]
            if records:
                registry.append(records)
            runs, missed = runs + len(encoded), missed + len(records)
        self.store.advance([item.advance for item in chunk])
        if self.metrics is not None:
            self._count(chunk, missed)
        return runs

    def _count(self, chunk: list[_Prepared], missed: int) -> None:
        assert self.metrics is not None
        published = time.time()
        for item in chunk:
            for trigger, due in item.fires:
                self.metrics.fires.labels(trigger).inc()
                if trigger == "schedule":  # a catch-up run is late by design
                    self.metrics.lateness.observe(max(0.0, published - due))
        self.metrics.missed.inc(missed)


def _envelope(
    definition: contract.EntryDefinition, slot: dt.datetime, trigger: contract.Trigger
) -> contract.RunEnvelope:
    return contract.RunEnvelope.for_slot(
        definition.namespace,
        definition.object_name,
        slot,
        definition.task,
        definition.policy,
        due=dt.datetime.fromtimestamp(definition.due(slot), dt.UTC),
        trigger=trigger,
    )


class BeatkeeperScheduler(RedBeatScheduler):  # type: ignore[misc]
    """celery beat's scheduler: ticks every `poll_seconds` and fires from redbeat keys."""

    lock: Any  # redbeat's: the held redis-py Lock, or None

    def __init__(self, app: Any, **kwargs: Any) -> None:
        settings = self.beat_settings = BeatSettings.from_env(os.environ)
        app.conf.redbeat_redis_url = settings.redis_url
        app.conf.redbeat_key_prefix = self.beat_settings.redbeat_prefix
        app.conf.redbeat_lock_timeout = int(self.beat_settings.lock_seconds)
        # Also the standby's lock polling interval; celery's CLI only takes whole seconds.
        kwargs["max_interval"] = self.beat_settings.poll_seconds
        super().__init__(app, **kwargs)
        client = broker.redis_client(
            settings.redis_url, settings.tls, timeout=settings.redis_timeout_seconds
        )
        store = RedbeatStore(client, settings.redbeat_prefix)
        self.store = store
        self.metrics = metrics.beat() if settings.metrics_port else None
        self._holding = False
        registries = broker.Registries(
            client,
            tenancy=settings.tenancy,
            retention_seconds=settings.retention_seconds,
            records_maxlen=settings.records_maxlen,
        )
        self.firer = Firer(app, store, registries, settings.batch, metrics=self.metrics)

    @property
    def schedule(self) -> dict[str, Any]:
        # redbeat would decode every due entry with its own decoder; ours are
        # Beatkeeper entries, read by `Firer`.
        return {}

    def setup_schedule(self) -> None:
        """No static entries: every entry comes from a ScheduledTask."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        poll = float(self.beat_settings.poll_seconds)
        try:
            self._hold_lock()
            self.firer.fire_due(utcnow())
            wait = self.firer.seconds_until_work(utcnow())
        except redis.RedisError as error:
            logger.warning("redis unavailable, retrying: %s", error)
            return poll
        return poll if wait is None else max(0.0, min(wait, poll))

    def _hold_lock(self) -> None:
        """Return only while this beat holds the HA lock; a beat without it never fires.

        redbeat takes the lock in a `beat_init` handler, and Celery swallows its
        error when Redis does not answer yet (a fresh install starts beat and
        Redis together): `lock` is then None and this beat would fire beside the
        one that holds it. So the lock is taken here instead, waiting as a
        standby does; a Redis error leaves it to the next tick.
        """
        if not self.lock_key:
            return
        if self.lock is None:
            self.lock = self._acquire_lock()
            logger.info("beat: Acquired lock %s", self.lock_key)
            self._lock_held(True)
            return
        try:
            self.lock.extend(int(self.lock_timeout))
            self._lock_held(True)  # redbeat's beat_init may have taken it
        except redis.exceptions.LockError:
            # The lock expired while this beat could not renew it (Redis away longer
            # than the lock timeout, a stall): another beat may hold it now. Firing
            # on would duplicate publishes, so this beat waits to take it again, as
            # a standby does, and forgets what it had prepared.
            logger.error("beat lost its lock %s; waiting to take it again", self.lock_key)
            self.lock = None
            self._lock_held(False)
            self.firer.prepared.clear()
            self.lock = self._acquire_lock()
            logger.info("beat: Acquired lock %s again", self.lock_key)
            self._lock_held(True)

    def _lock_held(self, held: bool) -> None:
        was, self._holding = self._holding, held
        if self.metrics is None:
            return
        self.metrics.lock_held.set(1 if held else 0)
        if held and not was:
            self.metrics.lock_takeovers.inc()

    def _acquire_lock(self) -> Any:
        """The lock as redbeat makes it (timeout, polling, extend-to script), held."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        lock.acquire()
        return lock


def beat_argv(extra: Sequence[str] = ()) -> list[str]:
    return [
        "beat",
        "--scheduler",
        "beatkeeper_beat.scheduler:BeatkeeperScheduler",
        "--schedule",
        "/tmp/beatkeeper-beat-schedule",  # noqa: S108 - unused by this scheduler
        "--loglevel",
        os.environ.get("BEATKEEPER_LOG_LEVEL", "INFO"),
        *extra,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """`beatkeeper beat`: celery beat with this scheduler, against the broker's Redis."""
    settings = BeatSettings.from_env(os.environ)
    if settings.metrics_port:
        metrics.beat().lock_held.set(0)  # a standby says so from its first scrape
        metrics.serve(settings.metrics_port, settings.metrics_listen)
    app = broker.celery_app(settings.redis_url, settings.tls, main="beatkeeper-beat")
    app.start(argv=beat_argv(list(argv or [])))
    return 0
