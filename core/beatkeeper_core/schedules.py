"""Schedule syntax and next-fire-time computation: cron, `every` and `at`.

This module owns what a ScheduledTask's `schedule`, `every`, `at` and `timeZone`
mean. The admission webhook uses it for error messages, the operator for
`status.nextScheduleTime`, and beat to decide when to fire. It is pure standard
library (plus `zoneinfo`): no pydantic, Redis or kopf.

Cron schedules are matched against wall-clock time in their time zone. Around
daylight saving time changes:

- A local time that does not exist because clocks jump forward (02:30 on the
  day daylight saving time starts in New York) runs once, at the first instant
  after the jump (03:00 local). Several slots inside the same skipped hour, and a
  slot at the end of it, run together as that single run. This holds for every
  cron schedule.
- A local time that occurs twice because clocks go back (01:00 to 01:59 on the
  day daylight saving time ends in New York) depends on the hour field:
  - If the hour field matches every hour (`*`, or a list, range or step that
    covers all 24 hours, such as `*/1` or `0-23`), the schedule follows real
    time and runs at both occurrences: first in daylight saving time, then again
    in standard time. `30 * * * *` runs at 01:30 EDT and again an hour later at
    01:30 EST, and `*/15 * * * *` keeps running every 15 minutes.
  - Otherwise (a specific hour, such as `30 1 * * *` or `0 1-3 * * *`), a
    repeated local time runs once, at its first occurrence: `30 1 * * *` runs at
    01:30 EDT and not at 01:30 EST.

`every` schedules run at fixed intervals of real time, unaffected by daylight
saving time; `at` schedules run once. Every instant this module returns is a
timezone-aware UTC datetime.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import MAXYEAR, UTC, date, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ScheduleError(ValueError):
    """Invalid schedule input. The message omits the field path; callers prefix it."""


class TimeZoneError(ScheduleError):
    """An unknown time zone, so callers can blame `timeZone` rather than `schedule`."""


# --- durations (`every`) -------------------------------------------------------------------

# Digits are capped so absurd input is refused as text instead of overflowing later.
_DURATION = re.compile(r"(?:([0-9]{1,12})h)?(?:([0-9]{1,12})m)?(?:([0-9]{1,12})s)?", re.ASCII)
_DURATION_HINT = "not a duration; use whole numbers with units h, m and s, such as 30s, 5m or 1h30m"


def parse_duration(text: str) -> int:
    """Seconds in a Go-like duration such as `30s`, `5m` or `1h30m` (at least 1 s)."""
    match = _DURATION.fullmatch(text)
    if match is None or not text:
        raise ScheduleError(f'"{text}": {_DURATION_HINT}')
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise ScheduleError(f'"{text}": must be at least 1s')
    return total


def format_duration(seconds: int) -> str:
    """The shortest duration text for `seconds`: 5400 -> "1h30m", 3600 -> "1h"."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"


# --- time zones ---------------------------------------------------------------------------

# IANA keys are slash-separated words; no dots rules out "../" and file names like zone.tab.
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*", re.ASCII)
# Files under the zoneinfo directory that ZoneInfo loads but that are not IANA zone names.
_NOT_ZONES = frozenset({"localtime", "posixrules"})
_NOT_ZONE_PREFIXES = ("posix/", "right/")


def parse_time_zone(name: str) -> ZoneInfo:
    """The zone for an IANA name such as `Europe/Berlin`; nothing else is accepted."""
    error = TimeZoneError(f'"{name}": unknown IANA time zone')
    if not _ZONE_KEY.fullmatch(name) or name in _NOT_ZONES or name.startswith(_NOT_ZONE_PREFIXES):
        raise error
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise error from None


# --- cron syntax --------------------------------------------------------------------------


class _Invalid(Exception):
    """One problem in a cron expression; `CronSchedule` adds the expression in front."""


# Spelled out: calendar.month_name follows the process locale.
_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_MONTHS = {name[:3].upper(): number for number, name in enumerate(_MONTH_NAMES, start=1)}
_DAYS = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}
_LONGEST_MONTH = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}  # others: 31


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: Mapping[str, int] | None = None
    names_hint: str = ""

    def value(self, text: str, item: str) -> int:
        """The number `text` stands for, checked against this field's range."""
        if text.isdigit():
            # Long digit strings are out of range anyway; int() of thousands of digits raises.
            number = int(text) if len(text) <= 9 else self.high + 1
            if not self.low <= number <= self.high:
                raise _Invalid(f"{self.name} {text} is out of range {self.low}-{self.high}")
            return number
        if self.names is None:
            raise _Invalid(self.garbage(item))
        if text.upper() not in self.names:
            raise _Invalid(f'{self.name} "{text}" is not {self.names_hint}')
        return self.names[text.upper()]

    def garbage(self, item: str) -> str:
        return f'{self.name} "{item}" is not a number, a name, a range or a step'


_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY_OF_MONTH = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS, "a month name (JAN-DEC)")
_DAY_OF_WEEK = _Field("day-of-week", 0, 7, _DAYS, "a day name (SUN-SAT)")
_FIELDS = (_MINUTE, _HOUR, _DAY_OF_MONTH, _MONTH, _DAY_OF_WEEK)

_ITEM = re.compile(
    r"(?P<start>\*|[0-9]+|[A-Za-z]+)(?:-(?P<end>[0-9]+|[A-Za-z]+))?(?:/(?P<step>[0-9]+))?",
    re.ASCII,
)
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELD_COUNT = (
    "expected 5 fields (minute hour day-of-month month day-of-week) or a macro such as @daily"
)
_UNKNOWN_MACRO = "unknown macro; use @yearly, @monthly, @weekly, @daily or @hourly"


def _parse_item(spec: _Field, item: str) -> range:
    """The values one comma-separated item allows, problems reported left to right."""
    match = _ITEM.fullmatch(item)
    if match is None or (match["start"] == "*" and match["end"]):
        raise _Invalid(spec.garbage(item))
    start, end, step = match.group("start", "end", "step")
    if start == "*":
        low, high = spec.low, spec.high
    else:
        low = spec.value(start, item)
        high = _range_end(spec, low, end, item) if end else (spec.high if step else low)
        if high < low:
            raise _Invalid(
                f"{spec.name} range {start}-{end} is reversed; write the smaller value first"
            )
    return range(low, high + 1, _step(spec, step) if step else 1)


def _range_end(spec: _Field, low: int, end: str, item: str) -> int:
    high = spec.value(end, item)
    # SUN is both 0 and 7, so "FRI-SUN" means Friday to Sunday rather than a reversed range.
    if spec is _DAY_OF_WEEK and end.isalpha() and high == 0 and low > 0:
        return 7
    return high


def _step(spec: _Field, text: str) -> int:
    step = int(text) if len(text) <= 9 else spec.high + 1
    if step == 0:
        raise _Invalid(f"{spec.name} step {text} is not allowed; a step must be at least 1")
    if step > spec.high:
        raise _Invalid(f"{spec.name} {text} is out of range {spec.low}-{spec.high}")
    return step


def _parse_field(spec: _Field, text: str) -> frozenset[int]:
    return frozenset(value for item in text.split(",") for value in _parse_item(spec, item))


@dataclass(frozen=True)
class _CronSpec:
    """A parsed cron expression, laid out for fast searching."""

    times: tuple[tuple[int, int], ...]  # every allowed (hour, minute), sorted
    days: frozenset[int]
    months: tuple[int, ...]  # sorted
    weekdays: frozenset[int]  # 0 = Sunday; 7 is folded into 0
    days_restricted: bool
    weekdays_restricted: bool
    every_hour: bool  # the hour field allows all 24 hours: repeated local times run twice

    def days_in(self, year: int, month: int, first: int = 1) -> Iterator[int]:
        """The days of `month` from day `first` on that match, in order."""
        first_weekday, length = calendar.monthrange(year, month)  # Monday = 0
        for day in range(first, length + 1):
            if self.day_matches(day, (first_weekday + day) % 7):
                yield day

    def day_matches(self, day: int, weekday: int) -> bool:
        # Standard cron: when both day fields are restricted, either may match.
        if self.days_restricted and self.weekdays_restricted:
            return day in self.days or weekday in self.weekdays
        if self.weekdays_restricted:
            return weekday in self.weekdays
        return day in self.days

    def dates_from(self, start: date, years: int) -> Iterator[date]:
        """Matching dates on or after `start`, for at most `years` years."""
        for year in range(start.year, min(start.year + years, MAXYEAR) + 1):
            for month in self.months:
                if (year, month) < (start.year, start.month):
                    continue
                first = start.day if (year, month) == (start.year, start.month) else 1
                for day in self.days_in(year, month, first):
                    yield date(year, month, day)


def _spec_from_fields(fields: list[str]) -> _CronSpec:
    minutes, hours, days, months, weekdays = (
        _parse_field(spec, text) for spec, text in zip(_FIELDS, fields, strict=True)
    )
    return _CronSpec(
        times=tuple((hour, minute) for hour in sorted(hours) for minute in sorted(minutes)),
        days=days,
        months=tuple(sorted(months)),
        weekdays=frozenset(day % 7 for day in weekdays),
        days_restricted=fields[2] != "*",
        weekdays_restricted=fields[4] != "*",
        every_hour=len(hours) == 24,
    )


def _check_fires(spec: _CronSpec) -> None:
    """Refuse day-of-month and month combinations that no calendar has."""
    if spec.weekdays_restricted:
        return  # the day-of-week alternative always matches some day
    longest = max(_LONGEST_MONTH.get(month, 31) for month in spec.months)
    if min(spec.days) <= longest:
        return
    months = _join((_MONTH_NAMES[month - 1] for month in spec.months), "and")
    verb = "has" if len(spec.months) == 1 else "have"
    days = _join((str(day) for day in sorted(spec.days)), "or")
    raise _Invalid(f"never fires ({months} {verb} no day {days})")


def _join(words: Iterable[str], conjunction: str) -> str:
    *rest, last = words
    return f"{', '.join(rest)} {conjunction} {last}" if rest else last


def _parse_expression(expression: str) -> _CronSpec:
    text = expression.strip()
    try:
        if text.startswith("@"):
            if text.lower() not in _MACROS:
                raise _Invalid(_UNKNOWN_MACRO)
            text = _MACROS[text.lower()]
        fields = text.split()
        if len(fields) != 5:
            raise _Invalid(f"{_FIELD_COUNT}, got {len(fields)}")
        spec = _spec_from_fields(fields)
        _check_fires(spec)
    except _Invalid as error:
        raise ScheduleError(f'"{expression}": {error}') from None
    return spec


# --- schedules ----------------------------------------------------------------------------

# Feb 29 schedules can wait 8 years (2096 -> 2104); 28 covers every calendar pattern.
_SEARCH_YEARS = 28
_ZERO = timedelta(0)
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)


def _offset(zone: ZoneInfo, wall: datetime) -> timedelta:
    """`zone`'s UTC offset at naive wall-clock time `wall`, read according to `wall.fold`.

    In a gap fold=0 gives the offset before the jump and fold=1 the one after; in a
    repeated stretch fold=0 gives the first occurrence's offset and fold=1 the second's.
    """
    offset = zone.utcoffset(wall)
    if offset is None:  # never for a ZoneInfo; this narrows the type
        raise ValueError(f"no UTC offset in {zone} at {wall}")
    return offset


def _utc(instant: datetime, what: str = "instant") -> datetime:
    # Converting first matters: Python compares and subtracts two datetimes that share a
    # tzinfo by wall-clock time, which is wrong across a DST change.
    if instant.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware: {instant!r}")
    return instant.astimezone(UTC)


@dataclass(frozen=True)
class CronSchedule:
    """A 5-field cron expression (or macro) matched against wall-clock time in `time_zone`."""

    expression: str
    time_zone: str = "UTC"
    _spec: _CronSpec = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Parsed once here so next_after, which beat calls for every fire, only searches.
        object.__setattr__(self, "_spec", _parse_expression(self.expression))
        object.__setattr__(self, "_zone", parse_time_zone(self.time_zone))

    @classmethod
    def parse(cls, expression: str, time_zone: str = "UTC") -> CronSchedule:
        """Validate and parse; raises ScheduleError (TimeZoneError for the zone)."""
        return cls(expression, time_zone)

    def next_after(self, instant: datetime) -> datetime | None:
        """The first run strictly after `instant`, in UTC; None if there is none."""
        return next(self.runs_after(instant), None)

    def runs_after(self, instant: datetime) -> Iterator[datetime]:
        """Every run strictly after `instant`, oldest first, in UTC."""
        last = _utc(instant)
        for run in self._candidates(last.astimezone(self._zone)):
            # Candidates never go backwards, so "later than the last one" drops both
            # slots already past and slots that coalesce into one gap-end instant.
            if run > last:
                last = run
                yield run

    def _candidates(self, local: datetime) -> Iterator[datetime]:
        """Run instants of the slots that may run after `local`, in UTC, never decreasing.

        A slot runs at its first occurrence, or at the end of the gap that skipped it.
        For every-hour schedules a repeated slot also runs at its second occurrence. In
        real time the second occurrences of a repeated stretch come after all its first
        occurrences and before the slots that follow it, so they are held back until
        the walk reaches a slot that is not repeated.
        """
        zone, twice = self._zone, self._spec.every_hour
        start = local.replace(tzinfo=None, fold=0)
        shift = _offset(zone, start) - _offset(zone, start.replace(fold=1)) if twice else _ZERO
        # `shift` is nonzero inside a repeated stretch, which ends within one shift of
        # `local`. In its second pass (fold=1) only second occurrences are ahead. In its
        # first pass the slots of the last shift before `local` still run again later.
        second_pass_end = start + shift if local.fold else datetime.min
        earlier = start - shift if shift and not local.fold else None
        repeats: list[datetime] = []  # second occurrences held back
        for naive in self._wall_clock_slots(start):
            offset, later_offset = _offset(zone, naive), _offset(zone, naive.replace(fold=1))
            repeated = twice and offset > later_offset  # the clocks went back over it
            if repeated and naive < second_pass_end:
                yield (naive - later_offset).replace(tzinfo=UTC)
                continue
            # The first slot that is not repeated ends the first pass. (Repeated stretches
            # are far apart: in tzdata, clocks never go back twice within days.)
            if (earlier is not None or repeats) and not repeated:
                if earlier is not None:
                    yield from self._second_occurrences(earlier, start)
                    earlier = None
                yield from repeats
                repeats = []
            if repeated:
                repeats.append((naive - later_offset).replace(tzinfo=UTC))
            if offset < later_offset:  # skipped: the clocks jumped forward over it
                yield self._gap_end(naive)
            else:  # fold=0 reads a repeated time with the earlier offset: first occurrence
                yield (naive - offset).replace(tzinfo=UTC)
        if earlier is not None:
            yield from self._second_occurrences(earlier, start)
        yield from repeats

    def _second_occurrences(self, begin: datetime, end: datetime) -> Iterator[datetime]:
        """Second occurrences, in UTC, of the repeated slots from `begin` to `end`'s minute."""
        zone, end = self._zone, end.replace(second=0, microsecond=0)
        for naive in self._wall_clock_slots(begin):
            if naive >= end:
                return
            later_offset = _offset(zone, naive.replace(fold=1))
            if _offset(zone, naive) > later_offset:
                yield (naive - later_offset).replace(tzinfo=UTC)

    def _wall_clock_slots(self, start: datetime) -> Iterator[datetime]:
        """Naive local slots from the minute of naive `start` on, in wall-clock order."""
        times, today = self._spec.times, start.date()
        first = bisect_left(times, (start.hour, start.minute))
        for day in self._spec.dates_from(today, _SEARCH_YEARS):
            for hour, minute in islice(times, first if day == today else 0, None):
                yield datetime(day.year, day.month, day.day, hour, minute)

    def _gap_end(self, naive: datetime) -> datetime:
        """The transition instant that skipped `naive`, found by bisecting whole seconds."""
        # In a gap, fold=1 reads `naive` with the offset after the jump (an instant before
        # it) and fold=0 with the offset before it (an instant after it).
        before = naive.replace(tzinfo=self._zone, fold=1).astimezone(UTC)
        after = naive.replace(tzinfo=self._zone, fold=0).astimezone(UTC)
        offset_before = before.astimezone(self._zone).utcoffset()
        while after - before > _SECOND:
            middle = before + (after - before) // 2
            middle -= timedelta(microseconds=middle.microsecond)
            if middle.astimezone(self._zone).utcoffset() == offset_before:
                before = middle
            else:
                after = middle
        return after


@dataclass(frozen=True)
class IntervalSchedule:
    """Runs every `seconds` of real time: `anchor + k * seconds` for k >= 1."""

    anchor: datetime
    seconds: int

    def __post_init__(self) -> None:
        _utc(self.anchor, "anchor")
        if self.seconds < 1:
            raise ValueError(f"an interval must be at least 1 second: {self.seconds}")

    def next_after(self, instant: datetime) -> datetime | None:
        """The first slot strictly after `instant`, in UTC; None past the calendar's end."""
        return self._slot(self._index_after(instant))

    def _index_after(self, instant: datetime) -> int:
        # Whole microseconds keep the arithmetic exact; timedelta products could overflow.
        elapsed = (_utc(instant) - _utc(self.anchor)) // _MICROSECOND
        return max(1, elapsed // (self.seconds * 1_000_000) + 1)

    def _slot(self, index: int) -> datetime | None:
        try:
            return _utc(self.anchor) + index * self.seconds * _SECOND
        except OverflowError:
            return None


@dataclass(frozen=True)
class OnceSchedule:
    """Runs once, at `at`."""

    at: datetime

    def __post_init__(self) -> None:
        _utc(self.at, "at")

    def next_after(self, instant: datetime) -> datetime | None:
        """`at` (in UTC) if it is strictly after `instant`, else None."""
        at = _utc(self.at)
        return at if at > _utc(instant) else None


Schedule = CronSchedule | IntervalSchedule | OnceSchedule


def slots_between(
    schedule: Schedule, after: datetime, until: datetime, limit: int | None = None
) -> list[datetime]:
    """Every slot `s` with `after < s <= until`, oldest first, in UTC.

    With `limit`, only the latest `limit` of them (still oldest first): catch-up
    after downtime runs at most `maxRuns` missed slots, and the latest ones matter.
    """
    after, until = _utc(after, "after"), _utc(until, "until")
    if limit is not None and limit < 0:
        raise ValueError(f"limit cannot be negative: {limit}")
    if isinstance(schedule, IntervalSchedule):
        return _interval_slots(schedule, after, until, limit)
    if isinstance(schedule, OnceSchedule):
        slot = schedule.next_after(after)
        return [slot] if slot is not None and slot <= until and limit != 0 else []
    latest: deque[datetime] = deque(maxlen=limit)
    for run in schedule.runs_after(after):
        if run > until:
            break
        latest.append(run)
    return list(latest)


def _interval_slots(
    schedule: IntervalSchedule, after: datetime, until: datetime, limit: int | None
) -> list[datetime]:
    # Arithmetic, not iteration: `every: 1s` over a day of downtime is 86,400 slots.
    first = schedule._index_after(after)
    last = schedule._index_after(until) - 1  # the first index after `until`, minus one
    if limit is not None:
        first = max(first, last - limit + 1)
    slots = (schedule._slot(index) for index in range(first, last + 1))
    return [slot for slot in slots if slot is not None]


def describe(schedule: Schedule) -> str:
    """Short human text for logs: `*/5 * * * * (Europe/Berlin)`, `every 30s`, `at ...Z`."""
    if isinstance(schedule, IntervalSchedule):
        return f"every {format_duration(schedule.seconds)}"
    if isinstance(schedule, OnceSchedule):
        at = schedule.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return f"at {at}"
    return f"{' '.join(schedule.expression.split())} ({schedule.time_zone})"
