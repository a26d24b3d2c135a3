"""The message contract between operator, beat and worker, defined once.

- `EntryDefinition`: what the operator writes into a celery-redbeat entry for one
  ScheduledTask and beat reads back (field layout of redbeat's `definition`).
- `RunEnvelope`: the single argument of the `beatkeeper.run` Celery task that
  beat publishes for one slot and the worker executes.
- `RunRecord`: what the worker appends to the run-record stream on every state
  change of a run; the operator folds these into ScheduledTask status.

Everything here is JSON; nothing is pickled. Times are timezone-aware UTC.
Imported by the worker image, so it must not import kopf or the Kubernetes client.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from beatkeeper_core import schedules

ENTRY_TASK = "beatkeeper.run"
# Built-in tasks every worker registers without user code (beatkeeper_worker.builtins).
BUILTIN_TASKS = ("beatkeeper.http", "beatkeeper.sleep")
MESSAGE_LIMIT = 1024


class RunState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    MISSED = "Missed"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.SKIPPED, RunState.MISSED})


class ConcurrencyPolicy(StrEnum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


Trigger = Literal["schedule", "catch-up", "run-now"]


def utc(instant: dt.datetime) -> dt.datetime:
    if instant.tzinfo is None:
        raise ValueError(f"naive datetime {instant!r}: times in the contract are aware")
    return instant.astimezone(dt.UTC)


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(instant: dt.datetime) -> str:
    """The one time format: RFC 3339 in UTC, whole seconds, `Z` (Kubernetes' metav1.Time).

    Slots in run ids, every time field of status, events and `beatkeeper runs` use it.
    """
    return utc(instant).replace(microsecond=0).strftime(TIME_FORMAT)


def parse_time(text: object) -> dt.datetime:
    """A time read from the API (RFC 3339, any offset, fractions allowed), in UTC;
    raises ValueError."""
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(dt.UTC)


def format_slot(slot: dt.datetime) -> str:
    """A slot as it appears in run ids."""
    return format_time(slot)


def parse_slot(text: str) -> dt.datetime:
    """A slot of a run id (exactly `format_slot`'s form)."""
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.UTC)


def object_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def run_id(namespace: str, name: str, slot: dt.datetime, tag: str = "") -> str:
    """`<namespace>/<name>@<slot>`, and `~<tag>` for runs no schedule made (run-now)."""
    base = f"{object_key(namespace, name)}@{format_slot(slot)}"
    return f"{base}~{tag}" if tag else base


def parse_run_id(value: str) -> tuple[str, str, dt.datetime]:
    """Split `<namespace>/<name>@<slot>[~<tag>]`; raises ValueError when malformed."""
    key, _, rest = value.rpartition("@")
    slot, _, _tag = rest.partition("~")
    namespace, _, name = key.partition("/")
    if not (namespace and name and slot):
        raise ValueError(f"not a run id: {value!r}")
    return namespace, name, parse_slot(slot)


def run_now_tag(token: str) -> str:
    """The run id tag of the run a run-now token asks for: stable per token, and never
    the id of a scheduled slot, even one in the same second."""
    return "now-" + hashlib.blake2b(token.encode(), digest_size=4).hexdigest()


def allowed_task_globs(allowed: Iterable[str], task_modules: Iterable[str]) -> tuple[str, ...]:
    """What a pool allows: its allowedTasks; when it lists none, the tasks of its own
    taskModules (`<module>.*`) and Beatkeeper's built-ins. Never everything by default.
    Admission and the worker both judge a task name by this one list."""
    listed = tuple(allowed)
    if listed:
        return listed
    return (*(f"{module}.*" for module in task_modules), *BUILTIN_TASKS)


def queue_name(namespace: str, pool: str) -> str:
    # The namespace is part of the name, so one namespace's objects can never
    # feed or starve another namespace's workers.
    return f"beatkeeper.{namespace}.{pool}"


def jitter_delay(run: str, jitter_seconds: int) -> float:
    """The delay jitterSeconds adds to one slot: pseudo-random, but stable per run id,
    so a restarted beat or operator computes the same due time."""
    if jitter_seconds <= 0:
        return 0.0
    digest = hashlib.blake2b(run.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (jitter_seconds * 1000 + 1) / 1000


WIRE_VERSION = 1


class _Frozen(BaseModel):
    # Fields a newer writer added are ignored, so an operator, beat and workers one
    # version apart (a rolling `helm upgrade`) still read each other.
    model_config = ConfigDict(frozen=True, extra="ignore")


class _Versioned(_Frozen):
    """A top-level wire format: it always carries the version of its writer.

    Written even where defaults are left out; a payload of a writer from before
    versions is version 1. Readers take any version: a change a reader could
    misread gets a new field, never a new meaning for an old one.
    """

    version: int = Field(default=WIRE_VERSION, ge=1)

    @model_serializer(mode="wrap")
    def _with_version(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            data.setdefault("version", self.version)
        return data


class RetryPolicy(_Frozen):
    max_retries: int = Field(default=3, ge=0)
    initial_seconds: float = Field(default=1.0, ge=0)
    factor: float = Field(default=2.0, ge=1)
    max_seconds: float = Field(default=600.0, ge=0)
    jitter: bool = True

    def backoff_ceiling(self, failed_attempts: int) -> float:
        """The delay cap after `failed_attempts` failures (1 for the first)."""
        exponent = max(failed_attempts - 1, 0)
        try:
            raw = self.initial_seconds * self.factor**exponent
        except OverflowError:
            raw = self.max_seconds
        return min(raw, self.max_seconds)

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt: exponential, capped, full jitter."""
        ceiling = self.backoff_ceiling(failed_attempts)
        return (rng or random).uniform(0, ceiling) if self.jitter else ceiling


class TaskCall(_Frozen):
    name: str
    args: list[JsonValue] = Field(default_factory=list)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)


class RunPolicy(_Frozen):
    """How every run of one ScheduledTask executes; copied into each envelope."""

    retry: RetryPolicy = RetryPolicy()
    soft_seconds: float | None = Field(default=None, gt=0)
    hard_seconds: float | None = Field(default=None, gt=0)
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    starting_deadline_seconds: float | None = Field(default=None, gt=0)


class RunEnvelope(_Versioned):
    run_id: str
    namespace: str
    name: str
    slot: dt.datetime
    due: dt.datetime  # slot plus jitter: when beat meant to publish it
    trigger: Trigger = "schedule"
    token: str = ""  # the run-now token that started it
    task: TaskCall
    policy: RunPolicy = RunPolicy()
    attempt: int = Field(default=1, ge=1)

    @classmethod
    def for_slot(
        cls,
        namespace: str,
        name: str,
        slot: dt.datetime,
        task: TaskCall,
        policy: RunPolicy,
        *,
        due: dt.datetime | None = None,
        trigger: Trigger = "schedule",
        tag: str = "",
        token: str = "",
    ) -> RunEnvelope:
        return cls(
            run_id=run_id(namespace, name, slot, tag),
            namespace=namespace,
            name=name,
            slot=utc(slot),
            due=utc(due or slot),
            trigger=trigger,
            token=token,
            task=task,
            policy=policy,
        )

    @property
    def object_key(self) -> str:
        return object_key(self.namespace, self.name)

    @property
    def celery_task_id(self) -> str:
        return f"{self.run_id}#{self.attempt}"

    def next_attempt(self) -> RunEnvelope:
        return self.model_copy(update={"attempt": self.attempt + 1})


class RunRecord(_Versioned):
    run_id: str
    namespace: str
    name: str
    slot: dt.datetime
    state: RunState
    attempt: int = Field(default=1, ge=0)
    time: dt.datetime  # when this state change happened
    start_time: dt.datetime | None = None
    completion_time: dt.datetime | None = None
    reason: str = ""  # CamelCase, such as TimeLimitExceeded or TaskNotAllowed
    message: str = Field(default="", max_length=MESSAGE_LIMIT)
    next_attempt_at: dt.datetime | None = None
    trigger: Trigger = "schedule"
    token: str = ""  # the run-now token that started it
    worker: str = ""

    @classmethod
    def of(
        cls, envelope: RunEnvelope, state: RunState, time: dt.datetime, **fields: object
    ) -> RunRecord:
        message = str(fields.pop("message", ""))[:MESSAGE_LIMIT]
        return cls.model_validate(
            {
                "run_id": envelope.run_id,
                "namespace": envelope.namespace,
                "name": envelope.name,
                "slot": envelope.slot,
                "state": state,
                "attempt": envelope.attempt,
                "time": utc(time),
                "trigger": envelope.trigger,
                "token": envelope.token,
                "message": message,
                **fields,
            }
        )

    @property
    def object_key(self) -> str:
        return object_key(self.namespace, self.name)

    def to_stream_fields(self) -> dict[str, str]:
        return {"record": self.model_dump_json(exclude_defaults=True)}

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes] | dict[str, str]) -> RunRecord:
        raw = fields.get("record", fields.get(b"record"))  # type: ignore[call-overload]
        if raw is None:
            raise ValueError("stream entry has no 'record' field")
        return cls.model_validate_json(raw)


def stream_records(entries: Iterable[tuple[Any, Mapping[Any, Any]]]) -> list[RunRecord]:
    """The run records among entries of the run-record stream (notices left out)."""
    return [
        RunRecord.from_stream_fields(fields)  # type: ignore[arg-type]
        for _id, fields in entries
        if "record" in fields or b"record" in fields
    ]


class ObjectNotice(_Versioned):
    """Something about one ScheduledTask that is not a run's state change, for its Events.

    Beat, which has no Kubernetes access, appends one to the run-record stream
    (field `notice`) when it cannot plan an entry; the operator posts it as a
    Warning event on the object.
    """

    namespace: str
    name: str
    reason: str  # CamelCase, the Event's reason
    message: str = Field(default="", max_length=MESSAGE_LIMIT)
    time: dt.datetime

    @property
    def object_key(self) -> str:
        return object_key(self.namespace, self.name)

    def to_stream_fields(self) -> dict[str, str]:
        return {"notice": self.model_dump_json(exclude_defaults=True)}


class ScheduleSpec(_Frozen):
    """One of cron, every or at, as the operator validated it."""

    kind: Literal["cron", "every", "at"]
    cron: str | None = None
    time_zone: str = "UTC"
    every_seconds: int | None = Field(default=None, ge=1)
    anchor: dt.datetime | None = None  # `every` slots are anchor + k * every, k >= 1
    at: dt.datetime | None = None

    def build(self) -> schedules.Schedule:
        """The schedule object that computes this spec's slots."""
        if self.kind == "cron" and self.cron is not None:
            return schedules.CronSchedule.parse(self.cron, self.time_zone)
        if self.kind == "every" and self.every_seconds is not None and self.anchor is not None:
            return schedules.IntervalSchedule(anchor=self.anchor, seconds=self.every_seconds)
        if self.kind == "at" and self.at is not None:
            return schedules.OnceSchedule(at=self.at)
        raise ValueError(f"incomplete {self.kind} schedule: {self!r}")


class CatchUp(_Frozen):
    window_seconds: int = Field(default=86400, ge=0)
    max_runs: int = Field(default=1, ge=0)


class EntryNext(_Frozen):
    """The `next` field of a redbeat entry: the slot its sorted-set score stands for.

    `slot` None means the entry has nothing left to fire (a past one-off, or
    suspended). Written with the score in one transaction, by whoever re-scores.
    """

    slot: dt.datetime | None = None
    due: float | None = None  # UNIX time: slot + jitter; the sorted-set score


class EntryMeta(_Frozen):
    """The `meta` field of a redbeat entry, owned by beat."""

    last_slot: dt.datetime | None = None
    last_run_at: dt.datetime | None = None
    total_run_count: int = 0


class EntryDefinition(_Versioned):
    """The `definition` of one redbeat entry, i.e. one ScheduledTask's schedule.

    Equality is what decides whether the operator rewrites the entry: any field
    here that changes causes a save; nothing else does.
    """

    name: str  # `<namespace>/<name>`
    namespace: str
    object_name: str
    queue: str
    schedule: ScheduleSpec
    task: TaskCall
    policy: RunPolicy = RunPolicy()
    jitter_seconds: int = Field(default=0, ge=0)
    catch_up: CatchUp = CatchUp()
    enabled: bool = True

    def first_slot(self, now: dt.datetime) -> dt.datetime | None:
        """The slot a newly written (or rewritten) entry is armed for.

        The next slot after `now`; a one-off `at` already past still runs when
        it lies inside the catch-up window (it was applied late, not missed by
        downtime we could have avoided).
        """
        if not self.enabled:
            return None
        spec = self.schedule
        if spec.kind == "at" and spec.at is not None:
            window_start = now - dt.timedelta(seconds=self.catch_up.window_seconds)
            in_window = spec.at > window_start and self.catch_up.max_runs > 0
            return spec.at if spec.at > now or in_window else None
        return spec.build().next_after(now)

    def due(self, slot: dt.datetime) -> float:
        """UNIX time a slot is published at: the slot plus its stable jitter."""
        run = run_id(self.namespace, self.object_name, slot)
        return utc(slot).timestamp() + jitter_delay(run, self.jitter_seconds)

    def next_for(self, slot: dt.datetime | None) -> EntryNext:
        return EntryNext(slot=slot, due=self.due(slot) if slot else None)
