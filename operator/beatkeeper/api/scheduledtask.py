"""ScheduledTask: what runs, when, and with which retry policy (the README, "The API")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue, StringConstraints, model_validator

from beatkeeper.api.base import (
    CRD,
    ApiModel,
    Condition,
    DnsLabel,
    StatusTime,
    cel,
    conditions_field,
)

KIND = "ScheduledTask"
PLURAL = "scheduledtasks"
RUN_NOW_ANNOTATION = "beatkeeper.dev/run-now"
CANCEL_ANNOTATION = "beatkeeper.dev/cancel"

TASK_NAME = r"^[A-Za-z_][A-Za-z0-9_]*([.:-][A-Za-z0-9_]+)*$"
RunState = Literal["Pending", "Running", "Retrying", "Succeeded", "Failed", "Skipped", "Missed"]


class TaskSpec(ApiModel):
    """The Celery task each run calls, and its arguments."""

    name: Annotated[str, StringConstraints(pattern=TASK_NAME, max_length=200)] = Field(
        description=(
            "A Celery task name registered in the pool's image, such as beatkeeper.http or "
            "myapp.tasks.report. It must match the pool's allowedTasks."
        )
    )
    args: list[JsonValue] = Field(
        default_factory=list,
        max_length=100,
        description="Positional arguments, any JSON values.",
        json_schema_extra={"items": CRD.PRESERVE},
    )
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Keyword arguments, an object of JSON values.",
        json_schema_extra=CRD.PRESERVE,
    )


class Backoff(ApiModel):
    """Exponential backoff between attempts: initialSeconds * factor^(n-1), capped."""

    cel_rules = (
        cel(
            "self.maxSeconds >= self.initialSeconds",
            "maxSeconds must not be less than initialSeconds",
            field_path=".maxSeconds",
        ),
    )

    initial_seconds: float = Field(
        default=1.0, ge=0, le=86400, description="Delay before the first retry, in seconds."
    )

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Backoff:
        if self.max_seconds < self.initial_seconds:
            raise ValueError("maxSeconds must not be less than initialSeconds")
        return self

    factor: float = Field(
        default=2.0, ge=1, le=10, description="Each further retry waits this many times longer."
    )
    max_seconds: float = Field(
        default=600.0, ge=0, le=86400, description="Upper bound of any one delay, in seconds."
    )


class Retry(ApiModel):
    """How a failed run is retried, inside the worker, without a new pod or message in flight."""

    max_retries: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Retries after the first attempt; a run makes at most maxRetries+1 attempts.",
    )
    backoff: Backoff = Field(
        default_factory=Backoff, description="Exponential backoff between attempts."
    )
    jitter: bool = Field(
        default=True,
        description=(
            "Full jitter: each delay is drawn uniformly between 0 and the backoff value, "
            "so retries of many runs do not arrive together."
        ),
    )


class Timeouts(ApiModel):
    """Time limits of one attempt."""

    cel_rules = (
        cel(
            "!has(self.softSeconds) || !has(self.hardSeconds)"
            " || self.softSeconds < self.hardSeconds",
            "softSeconds must be less than hardSeconds",
            field_path=".softSeconds",
        ),
    )

    @model_validator(mode="after")
    def _soft_before_hard(self) -> Timeouts:
        soft, hard = self.soft_seconds, self.hard_seconds
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError("softSeconds must be less than hardSeconds")
        return self

    soft_seconds: int | None = Field(
        default=None,
        ge=1,
        le=86400,
        description="After this many seconds the task gets SoftTimeLimitExceeded raised inside it.",
    )
    hard_seconds: int | None = Field(
        default=None,
        ge=1,
        le=86400,
        description=(
            "After this many seconds the attempt is killed; the run is Failed with reason "
            "TimeLimitExceeded."
        ),
    )


class CatchUp(ApiModel):
    """Which missed slots run after beat or the workers were down."""

    window_seconds: int = Field(
        default=86400,
        ge=0,
        le=31 * 86400,
        description="Only slots missed within this many seconds before now are run.",
    )
    max_runs: int = Field(
        default=1,
        ge=0,
        le=100,
        description=(
            "At most this many missed slots are run, the latest ones, oldest first; "
            "0 runs none (they are recorded Missed)."
        ),
    )


class ScheduledTaskSpec(ApiModel):
    """What runs, when, where, and with which retry policy."""

    cel_rules = (
        cel(
            "has(self.schedule) || has(self.every) || has(self.at)",
            "one of spec.schedule, spec.every or spec.at is required",
        ),
        cel(
            "[has(self.schedule), has(self.every), has(self.at)].filter(x, x).size() <= 1",
            "spec.schedule, spec.every and spec.at are mutually exclusive: set exactly one",
        ),
    )

    @model_validator(mode="after")
    def _exactly_one_schedule(self) -> ScheduledTaskSpec:
        chosen = [self.schedule, self.every, self.at]
        if all(value is None for value in chosen):
            raise ValueError("one of spec.schedule, spec.every or spec.at is required")
        if sum(value is not None for value in chosen) > 1:
            raise ValueError(
                "spec.schedule, spec.every and spec.at are mutually exclusive: set exactly one"
            )
        return self

    schedule: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description=(
            "A cron expression with 5 fields (minute hour day-of-month month day-of-week), with "
            "ranges, steps, lists and names, or a macro: @hourly, @daily, @weekly, @monthly, "
            "@yearly. Matched against wall-clock time in timeZone."
        ),
    )
    every: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description=(
            "A fixed interval such as 30s, 5m or 1h30m (at least 1s). Slots are the object's "
            "creation time plus whole multiples of the interval."
        ),
    )
    at: AwareDatetime | None = Field(
        default=None,
        description="One run at this RFC 3339 instant, such as 2026-12-01T09:00:00Z.",
        json_schema_extra={"format": "date-time"},
    )
    time_zone: str = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description=(
            "IANA time zone of the cron schedule, such as Europe/Berlin. A local time skipped "
            "by a DST change runs once at the end of the gap; a repeated one runs once, at its "
            "first occurrence, unless the hour field covers every hour (then both occurrences run)."
        ),
    )
    jitter_seconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="A random delay of 0..N seconds added to each fire, to spread load.",
    )
    suspend: bool = Field(
        default=False, description="Stop starting new runs; runs already active are not touched."
    )
    worker_pool: DnsLabel = Field(
        description=("Name of the WorkerPool in the same namespace whose workers run this task.")
    )
    task: TaskSpec = Field(description="The Celery task each run calls.")
    retry: Retry = Field(default_factory=Retry, description="Retry policy of each run.")
    timeouts: Timeouts | None = Field(default=None, description="Time limits of each attempt.")
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = Field(
        default="Allow",
        description=(
            "As a CronJob's: Allow runs overlap; Forbid skips a new run while one is active; "
            "Replace stops the active run and starts the new one."
        ),
    )
    starting_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=86400,
        description=(
            "A run that cannot start within this many seconds of its slot is recorded Missed "
            "instead of running late."
        ),
    )
    catch_up: CatchUp = Field(
        default_factory=CatchUp,
        description="Slots missed while beat or the workers were down; default: the latest one.",
    )
    history_limit: int = Field(
        default=5, ge=0, le=50, description="How many finished runs status.history keeps."
    )
    failure_threshold: int = Field(
        default=3,
        ge=0,
        le=1000,
        description=(
            "After this many failed runs in a row the task is Stalled (reason RunsFailing), so "
            "kstatus, Flux and Argo CD report it failed; the schedule stays armed and the next "
            "successful run clears it. 0: failed runs never change the task's health."
        ),
    )


class RunStatus(ApiModel):
    """One run as status shows it."""

    id: str = Field(description="<namespace>/<name>@<slot>, unique per slot.")
    scheduled_time: StatusTime = Field(description="The slot this run belongs to.")
    start_time: StatusTime | None = Field(
        default=None, description="When the latest attempt started."
    )
    completion_time: StatusTime | None = Field(default=None, description="When the run finished.")
    state: RunState = Field(description="The run's state.")
    attempts: int = Field(default=0, ge=0, description="Attempts started so far.")
    reason: str = Field(default="", description="Why it ended so, such as TimeLimitExceeded.")
    message: str = Field(default="", description="The latest error or note, shortened.")
    trigger: Literal["schedule", "catch-up", "run-now"] = Field(
        default="schedule", description="What started the run."
    )
    token: str | None = Field(
        default=None,
        description="For run-now: the beatkeeper.dev/run-now token that started it, so "
        "`kubectl wait --for=jsonpath='{.status.lastRun.token}'=TOKEN` finds it.",
    )


class ScheduledTaskStatus(ApiModel):
    """What happened: written by the operator through the status subresource only."""

    observed_generation: int = Field(
        default=0,
        ge=0,
        description="The metadata.generation the operator last acted on; 0 until it has seen "
        "the object (the CRD defaults it, so GitOps tools wait for the operator).",
    )
    conditions: list[Condition] = conditions_field()
    schedule: str | None = Field(
        default=None, description="The schedule in words (the Schedule printer column)."
    )
    next_schedule_time: StatusTime | None = Field(
        default=None, description="When the next run is due (jitter not included)."
    )
    last_schedule_time: StatusTime | None = Field(
        default=None, description="The slot of the latest run."
    )
    last_successful_time: StatusTime | None = Field(
        default=None, description="When a run last succeeded."
    )
    active: list[str] = Field(default_factory=list, description="Ids of runs in flight.")
    last_run: RunStatus | None = Field(default=None, description="The latest run.")
    history: list[RunStatus] = Field(
        default_factory=list, description="The latest finished runs, newest first."
    )
    succeeded: int = Field(default=0, ge=0, description="Runs that succeeded.")
    failed: int = Field(default=0, ge=0, description="Runs that failed.")
    retries: int = Field(default=0, ge=0, description="Retries made, over all runs.")
    missed: int = Field(default=0, ge=0, description="Runs not started within their deadline.")
    skipped: int = Field(default=0, ge=0, description="Runs skipped by concurrencyPolicy Forbid.")
    consecutive_failures: int = Field(
        default=0,
        ge=0,
        description="Runs failed in a row since the last success (stopped runs not counted).",
    )
    run_now_token: str | None = Field(
        default=None, description=f"The last {RUN_NOW_ANNOTATION} token that triggered a run."
    )
    cancel_token: str | None = Field(
        default=None,
        description=f"The last {CANCEL_ANNOTATION} token acted on (its active runs were stopped).",
    )
