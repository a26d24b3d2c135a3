"""Schedule syntax, error messages and next-fire times, DST transitions included.

Expected instants are written out literally. The brute-force reference at the end
is independent test code that walks UTC minute by minute, so it can check that
no slot is skipped, and none runs more often than the rules allow, around each
transition: twice in a repeated hour if the hour field matches every hour, else once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from beatkeeper_core.schedules import (
    CronSchedule,
    IntervalSchedule,
    OnceSchedule,
    ScheduleError,
    TimeZoneError,
    describe,
    format_duration,
    parse_duration,
    parse_time_zone,
    slots_between,
)

NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"
LORD_HOWE = "Australia/Lord_Howe"  # a 30-minute DST shift
SANTIAGO = "America/Santiago"  # changes at midnight
MINUTE = timedelta(minutes=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def runs(schedule: CronSchedule, start: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    for _ in range(count):
        nxt = schedule.next_after(found[-1] if found else start)
        assert nxt is not None
        found.append(nxt)
    return found


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("2h", 7200),
        ("90s", 90),
        ("1h0m5s", 3605),
        ("1h1s", 3601),
        ("1s", 1),
        ("0h0m1s", 1),
        ("24h", 86400),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


_NOT_A_DURATION = (
    "not a duration; use whole numbers with units h, m and s, such as 30s, 5m or 1h30m"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0s", '"0s": must be at least 1s'),
        ("0h0m0s", '"0h0m0s": must be at least 1s'),
        ("0m", '"0m": must be at least 1s'),
        ("5x", f'"5x": {_NOT_A_DURATION}'),
        ("", f'"": {_NOT_A_DURATION}'),
        ("1.5s", f'"1.5s": {_NOT_A_DURATION}'),
        ("-5s", f'"-5s": {_NOT_A_DURATION}'),
        ("1h 30m", f'"1h 30m": {_NOT_A_DURATION}'),
        ("30", f'"30": {_NOT_A_DURATION}'),
        ("5m1h", f'"5m1h": {_NOT_A_DURATION}'),
        ("1d", f'"1d": {_NOT_A_DURATION}'),
        ("5M", f'"5M": {_NOT_A_DURATION}'),
        (" 5m", f'" 5m": {_NOT_A_DURATION}'),
        ("h", f'"h": {_NOT_A_DURATION}'),
        ("+5s", f'"+5s": {_NOT_A_DURATION}'),
        ("\u0665s", f'"\u0665s": {_NOT_A_DURATION}'),  # an Arabic-Indic five
        ("9999999999999s", f'"9999999999999s": {_NOT_A_DURATION}'),
    ],
)
def test_parse_duration_refuses(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_duration(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5400, "1h30m"), (30, "30s"), (3600, "1h"), (3605, "1h5s"), (60, "1m"), (90061, "25h1m1s")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# --- time zones ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "UTC",
        NEW_YORK,
        BERLIN,
        LORD_HOWE,
        "Etc/GMT+5",
        "America/Argentina/Buenos_Aires",
        "America/Port-au-Prince",
    ],
)
def test_parse_time_zone(name: str) -> None:
    assert parse_time_zone(name).key == name


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus",
        "",
        "local",
        "localtime",
        "posixrules",
        "/etc/localtime",
        "/usr/share/zoneinfo/UTC",
        "../zoneinfo/UTC",
        "America/../UTC",
        "posix/America/New_York",
        "right/UTC",
        "zone.tab",
        "leapseconds",
        "America",
        "America/New_York/",
        "america/new_york",
        " UTC",
    ],
)
def test_parse_time_zone_refuses(name: str) -> None:
    with pytest.raises(TimeZoneError) as caught:
        parse_time_zone(name)
    assert str(caught.value) == f'"{name}": unknown IANA time zone'


def test_cron_schedule_blames_the_zone_with_a_time_zone_error() -> None:
    with pytest.raises(TimeZoneError) as caught:
        CronSchedule.parse("0 * * * *", "Mars/Olympus")
    assert str(caught.value) == '"Mars/Olympus": unknown IANA time zone'
    assert isinstance(caught.value, ScheduleError)
    assert isinstance(caught.value, ValueError)


# --- cron syntax errors -------------------------------------------------------------------

_FIVE_FIELDS = (
    "expected 5 fields (minute hour day-of-month month day-of-week) or a macro such as @daily"
)
_MACROS = "unknown macro; use @yearly, @monthly, @weekly, @daily or @hourly"
_GARBAGE = "is not a number, a name, a range or a step"
_FIRST = "write the smaller value first"


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("* * * *", f"{_FIVE_FIELDS}, got 4"),
        ("", f"{_FIVE_FIELDS}, got 0"),
        ("   ", f"{_FIVE_FIELDS}, got 0"),
        ("* * * * * *", f"{_FIVE_FIELDS}, got 6"),
        ("*/61 * * * *", "minute 61 is out of range 0-59"),
        ("*/60 * * * *", "minute 60 is out of range 0-59"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("0-60 * * * *", "minute 60 is out of range 0-59"),
        ("60 24 * * *", "minute 60 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 */24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
        ("0 0 */32 * *", "day-of-month 32 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * 0 *", "month 0 is out of range 1-12"),
        ("0 0 * */13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("0 0 * * */8", "day-of-week 8 is out of range 0-7"),
        ("99999999999 * * * *", "minute 99999999999 is out of range 0-59"),
        ("*/0 * * * *", "minute step 0 is not allowed; a step must be at least 1"),
        ("0 1-5/0 * * *", "hour step 0 is not allowed; a step must be at least 1"),
        ("61-70/0 * * * *", "minute 61 is out of range 0-59"),
        ("0 5-2 * * *", f"hour range 5-2 is reversed; {_FIRST}"),
        ("0 0 * DEC-JAN *", f"month range DEC-JAN is reversed; {_FIRST}"),
        ("0 0 * * FRI-MON", f"day-of-week range FRI-MON is reversed; {_FIRST}"),
        ("0 0 * * 5-0", f"day-of-week range 5-0 is reversed; {_FIRST}"),
        ("0 x * * *", f'hour "x" {_GARBAGE}'),
        ("MON * * * *", f'minute "MON" {_GARBAGE}'),
        ("0 0 L * *", f'day-of-month "L" {_GARBAGE}'),
        ("0 0 ? * *", f'day-of-month "?" {_GARBAGE}'),
        ("1,,2 * * * *", f'minute "" {_GARBAGE}'),
        ("-5 * * * *", f'minute "-5" {_GARBAGE}'),
        ("1.5 * * * *", f'minute "1.5" {_GARBAGE}'),
        ("*-5 * * * *", f'minute "*-5" {_GARBAGE}'),
        ("*/5-10 * * * *", f'minute "*/5-10" {_GARBAGE}'),
        ("0 0 * * 1/x", f'day-of-week "1/x" {_GARBAGE}'),
        ("0 0 * FOO *", 'month "FOO" is not a month name (JAN-DEC)'),
        ("0 0 * JAN-FOO *", 'month "FOO" is not a month name (JAN-DEC)'),
        ("0 0 * January *", 'month "January" is not a month name (JAN-DEC)'),
        ("0 0 * * FUN", 'day-of-week "FUN" is not a day name (SUN-SAT)'),
        ("0 0 * * monday", 'day-of-week "monday" is not a day name (SUN-SAT)'),
        ("@sometimes", _MACROS),
        ("@reboot", _MACROS),
        ("@every 5m", _MACROS),
        ("@", _MACROS),
        ("0 0 30 2 *", "never fires (February has no day 30)"),
        ("0 0 30,31 2 *", "never fires (February has no day 30 or 31)"),
        ("0 0 31 4 *", "never fires (April has no day 31)"),
        (
            "0 0 31 APR,JUN,SEP,NOV *",
            "never fires (April, June, September and November have no day 31)",
        ),
        ("0 0 31 2,4 *", "never fires (February and April have no day 31)"),
    ],
)
def test_invalid_cron(expression: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        CronSchedule.parse(expression)
    assert str(caught.value) == f'"{expression}": {reason}'
    assert not isinstance(caught.value, TimeZoneError)


@pytest.mark.parametrize("expression", ["0 0 29 2 *", "0 0 30 2 MON", "0 0 31 2,3 *", "0 0 31 * *"])
def test_possible_days_are_accepted(expression: str) -> None:
    CronSchedule.parse(expression)


# --- next fire times ----------------------------------------------------------------------

THURSDAY = utc("2026-01-15T10:07:30")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("* * * * *", "2026-01-15T10:08"),
        ("*/5 * * * *", "2026-01-15T10:10"),
        ("5/20 * * * *", "2026-01-15T10:25"),
        ("30 10 * * *", "2026-01-15T10:30"),
        ("7 10 * * *", "2026-01-16T10:07"),
        ("15,45 */2 * * *", "2026-01-15T10:15"),
        ("*/15 9-17 * * MON-FRI", "2026-01-15T10:15"),
        ("0 * * * *", "2026-01-15T11:00"),
        ("@hourly", "2026-01-15T11:00"),
        ("@daily", "2026-01-16T00:00"),
        ("@midnight", "2026-01-16T00:00"),
        ("@DAILY", "2026-01-16T00:00"),
        ("  @daily ", "2026-01-16T00:00"),
        ("@weekly", "2026-01-18T00:00"),
        ("@monthly", "2026-02-01T00:00"),
        ("@yearly", "2027-01-01T00:00"),
        ("@annually", "2027-01-01T00:00"),
        ("  0   12 * *   *  ", "2026-01-15T12:00"),
        ("0\t12 * * *", "2026-01-15T12:00"),
        ("0 9 * * MON-FRI", "2026-01-16T09:00"),
        ("0 9 * * 1-5", "2026-01-16T09:00"),
        ("0 22 * * 1-5/2", "2026-01-16T22:00"),
        ("0 12 * * SUN", "2026-01-18T12:00"),
        ("0 12 * * sun", "2026-01-18T12:00"),
        ("0 12 * * 0", "2026-01-18T12:00"),
        ("0 12 * * 7", "2026-01-18T12:00"),
        ("0 0 * * SAT-SUN", "2026-01-17T00:00"),
        ("0 0 * * FRI-SUN", "2026-01-16T00:00"),
        ("0 0 * * 6/1", "2026-01-17T00:00"),
        ("0 0 * * */3", "2026-01-17T00:00"),
        ("0 0 1 JAN,jul *", "2026-07-01T00:00"),
        ("0 0 1 Jan-Mar/2 *", "2026-03-01T00:00"),
        ("0 0 */10 * *", "2026-01-21T00:00"),
        ("0 0 1/10 * *", "2026-01-21T00:00"),
        ("0 0 31 * *", "2026-01-31T00:00"),
        ("0 0 31 2,3 *", "2026-03-31T00:00"),
        ("59 23 31 12 *", "2026-12-31T23:59"),
        ("00 07 * * *", "2026-01-16T07:00"),
    ],
)
def test_next_after_in_utc(expression: str, expected: str) -> None:
    assert CronSchedule.parse(expression).next_after(THURSDAY) == utc(expected)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 13 * *", "2026-02-13T00:00"),  # day of month only
        ("0 0 * * FRI", "2026-01-16T00:00"),  # day of week only
        ("0 0 13 * FRI", "2026-01-16T00:00"),  # both: either matches (Friday the 16th)
        ("0 0 1-7 * MON", "2026-01-19T00:00"),  # not "first Monday": any Monday, or days 1-7
        ("0 0 20 * MON", "2026-01-19T00:00"),
        ("0 0 16 * SUN", "2026-01-16T00:00"),
        ("0 0 30 2 MON", "2026-02-02T00:00"),  # never the 30th, but every Monday in February
        ("0 0 */1 * MON", "2026-01-16T00:00"),  # "*/1" is restricted, so every day matches
    ],
)
def test_day_of_month_or_day_of_week(expression: str, expected: str) -> None:
    assert CronSchedule.parse(expression).next_after(THURSDAY) == utc(expected)


def test_leap_day_waits_for_the_next_leap_year() -> None:
    schedule = CronSchedule.parse("0 0 29 2 *")
    assert runs(schedule, utc("2026-01-01T00:00"), 3) == [
        utc("2028-02-29T00:00"),
        utc("2032-02-29T00:00"),
        utc("2036-02-29T00:00"),
    ]
    # 2100 is not a leap year: eight years between runs.
    assert schedule.next_after(utc("2096-03-01T00:00")) == utc("2104-02-29T00:00")


@pytest.mark.parametrize(
    ("zone", "expression", "expected"),
    [
        (BERLIN, "0 9 * * *", "2026-01-16T08:00"),  # CET, UTC+1
        (LORD_HOWE, "0 0 * * *", "2026-01-15T13:00"),  # summer time, UTC+11
        ("Etc/GMT+5", "0 9 * * *", "2026-01-15T14:00"),  # POSIX sign: UTC-5
    ],
)
def test_next_after_in_a_time_zone(zone: str, expression: str, expected: str) -> None:
    assert CronSchedule.parse(expression, zone).next_after(THURSDAY) == utc(expected)


def test_results_are_utc_and_accept_any_aware_instant() -> None:
    schedule = CronSchedule.parse("0 9 * * *", BERLIN)
    berlin_morning = datetime(2026, 1, 15, 8, 59, tzinfo=ZoneInfo(BERLIN))
    result = schedule.next_after(berlin_morning)
    assert result == utc("2026-01-15T08:00")
    assert result is not None
    assert result.tzinfo is UTC


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CronSchedule.parse("* * * * *").next_after(datetime(2026, 1, 1))


def test_parsed_schedules_compare_by_what_the_user_wrote() -> None:
    assert CronSchedule.parse("0 * * * *") == CronSchedule("0 * * * *", "UTC")
    assert hash(CronSchedule.parse("0 * * * *")) == hash(CronSchedule("0 * * * *"))
    assert CronSchedule("0 * * * *") != CronSchedule("0 * * * *", BERLIN)


# --- daylight saving time -----------------------------------------------------------------
# New York 2026: 02:00 EST -> 03:00 EDT at 2026-03-08T07:00Z; 02:00 EDT -> 01:00 EST at
# 2026-11-01T06:00Z. Berlin: 02:00 CET -> 03:00 CEST at 2026-03-29T01:00Z; 03:00 CEST ->
# 02:00 CET at 2026-10-25T01:00Z. Lord Howe: 02:00 +10:30 -> 02:30 +11 at 2026-10-03T15:30Z;
# 02:00 +11 -> 01:30 +10:30 at 2026-04-04T15:00Z. Santiago: 00:00 -03 -> 23:00 -04 the day
# before at 2026-04-05T03:00Z; 00:00 -04 -> 01:00 -03 at 2026-09-06T04:00Z.

DST_CASES = [
    # New York, spring forward: 02:00-02:59 does not exist and runs once at 03:00 EDT.
    (
        NEW_YORK,
        "30 2 * * *",
        "2026-03-07T00:00",
        ["2026-03-07T07:30", "2026-03-08T07:00", "2026-03-09T06:30"],
    ),
    (NEW_YORK, "0 2 * * *", "2026-03-08T00:00", ["2026-03-08T07:00", "2026-03-09T06:00"]),
    (
        NEW_YORK,
        "*/15 2 * * *",
        "2026-03-08T06:00",
        ["2026-03-08T07:00", "2026-03-09T06:00", "2026-03-09T06:15"],
    ),
    (
        NEW_YORK,
        "*/15 2,3 * * *",
        "2026-03-08T06:00",
        [
            "2026-03-08T07:00",
            "2026-03-08T07:15",
            "2026-03-08T07:30",
            "2026-03-08T07:45",
            "2026-03-09T06:00",
        ],
    ),
    (NEW_YORK, "0 3 * * *", "2026-03-08T00:00", ["2026-03-08T07:00", "2026-03-09T07:00"]),
    (NEW_YORK, "30 1 * * *", "2026-03-08T00:00", ["2026-03-08T06:30", "2026-03-09T05:30"]),
    (
        NEW_YORK,
        "30 * * * *",
        "2026-03-08T05:00",
        [
            "2026-03-08T05:30",
            "2026-03-08T06:30",
            "2026-03-08T07:00",
            "2026-03-08T07:30",
            "2026-03-08T08:30",
        ],
    ),
    (
        NEW_YORK,
        "0 * * * *",
        "2026-03-08T05:00",
        ["2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00"],
    ),
    # New York, fall back: 01:00-01:59 happens twice, first in EDT (05:00Z-05:59Z), then in
    # EST (06:00Z-06:59Z). Schedules whose hour field matches every hour run at both; the
    # others run at the first (EDT) one only.
    (NEW_YORK, "30 2 * * *", "2026-11-01T00:00", ["2026-11-01T07:30", "2026-11-02T07:30"]),
    (
        NEW_YORK,
        "*/15 2 * * *",
        "2026-11-01T05:00",
        [
            "2026-11-01T07:00",
            "2026-11-01T07:15",
            "2026-11-01T07:30",
            "2026-11-01T07:45",
            "2026-11-02T07:00",
        ],
    ),
    (
        NEW_YORK,
        "*/15 2,3 * * *",
        "2026-11-01T07:40",
        [
            "2026-11-01T07:45",
            "2026-11-01T08:00",
            "2026-11-01T08:15",
            "2026-11-01T08:30",
            "2026-11-01T08:45",
            "2026-11-02T07:00",
        ],
    ),
    (NEW_YORK, "0 3 * * *", "2026-11-01T00:00", ["2026-11-01T08:00", "2026-11-02T08:00"]),
    (NEW_YORK, "30 1 * * *", "2026-11-01T00:00", ["2026-11-01T05:30", "2026-11-02T06:30"]),
    (
        NEW_YORK,
        "*/15 1 * * *",
        "2026-11-01T04:00",
        [
            "2026-11-01T05:00",
            "2026-11-01T05:15",
            "2026-11-01T05:30",
            "2026-11-01T05:45",
            "2026-11-02T06:00",
        ],
    ),
    (
        NEW_YORK,
        "0 1-3 * * *",
        "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T07:00", "2026-11-01T08:00", "2026-11-02T06:00"],
    ),
    # Every hour but one is still a specific set of hours.
    (
        NEW_YORK,
        "0 1-23 * * *",
        "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T07:00", "2026-11-01T08:00"],
    ),
    (
        NEW_YORK,
        "30 * * * *",
        "2026-11-01T04:00",
        [
            "2026-11-01T04:30",
            "2026-11-01T05:30",
            "2026-11-01T06:30",
            "2026-11-01T07:30",
            "2026-11-01T08:30",
        ],
    ),
    (
        NEW_YORK,
        "*/15 * * * *",
        "2026-11-01T04:55",
        [
            "2026-11-01T05:00",
            "2026-11-01T05:15",
            "2026-11-01T05:30",
            "2026-11-01T05:45",
            "2026-11-01T06:00",
            "2026-11-01T06:15",
            "2026-11-01T06:30",
            "2026-11-01T06:45",
            "2026-11-01T07:00",
        ],
    ),
    (
        NEW_YORK,
        "0 * * * *",
        "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00", "2026-11-01T08:00"],
    ),
    (
        NEW_YORK,
        "@hourly",
        "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"],
    ),
    (
        NEW_YORK,
        "0 0-23 * * *",
        "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"],
    ),
    (
        NEW_YORK,
        "0 */1 * * *",
        "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"],
    ),
    # A list that covers all 24 hours matches every hour too.
    (
        NEW_YORK,
        "0 0-11,12-23 * * *",
        "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"],
    ),
    # Starting inside the repeated hour, in its EDT pass (05:00Z-05:59Z) or its EST pass.
    # From the EDT pass, slots earlier in the hour are still ahead in the EST pass.
    (NEW_YORK, "*/15 * * * *", "2026-11-01T05:50", ["2026-11-01T06:00", "2026-11-01T06:15"]),
    (
        NEW_YORK,
        "* * * * *",
        "2026-11-01T05:58:30",
        ["2026-11-01T05:59", "2026-11-01T06:00", "2026-11-01T06:01"],
    ),
    (NEW_YORK, "* * * * *", "2026-11-01T06:58:30", ["2026-11-01T06:59", "2026-11-01T07:00"]),
    (NEW_YORK, "0 * * * *", "2026-11-01T05:35", ["2026-11-01T06:00", "2026-11-01T07:00"]),
    (NEW_YORK, "30 * * * *", "2026-11-01T05:30", ["2026-11-01T06:30", "2026-11-01T07:30"]),
    (NEW_YORK, "30 * * * *", "2026-11-01T06:10", ["2026-11-01T06:30", "2026-11-01T07:30"]),
    (NEW_YORK, "*/15 1 * * *", "2026-11-01T05:50", ["2026-11-02T06:00"]),
    (NEW_YORK, "30 1 * * *", "2026-11-01T05:10", ["2026-11-01T05:30", "2026-11-02T06:30"]),
    (NEW_YORK, "30 1 * * *", "2026-11-01T06:10", ["2026-11-02T06:30"]),
    # Berlin: the gap and the repeat are 02:00-02:59. The repeat is 00:00Z-00:59Z in CEST,
    # then 01:00Z-01:59Z in CET; 01:00-01:59 happens once (23:00Z-23:59Z the day before).
    (BERLIN, "30 2 * * *", "2026-03-29T00:00", ["2026-03-29T01:00", "2026-03-30T00:30"]),
    (
        BERLIN,
        "*/15 2,3 * * *",
        "2026-03-29T00:00",
        [
            "2026-03-29T01:00",
            "2026-03-29T01:15",
            "2026-03-29T01:30",
            "2026-03-29T01:45",
            "2026-03-30T00:00",
        ],
    ),
    (BERLIN, "30 2 * * *", "2026-10-24T22:00", ["2026-10-25T00:30", "2026-10-26T01:30"]),
    (
        BERLIN,
        "*/15 2 * * *",
        "2026-10-24T23:50",
        [
            "2026-10-25T00:00",
            "2026-10-25T00:15",
            "2026-10-25T00:30",
            "2026-10-25T00:45",
            "2026-10-26T01:00",
        ],
    ),
    (BERLIN, "30 1 * * *", "2026-10-24T22:00", ["2026-10-24T23:30", "2026-10-26T00:30"]),
    (
        BERLIN,
        "*/15 1 * * *",
        "2026-10-24T22:00",
        [
            "2026-10-24T23:00",
            "2026-10-24T23:15",
            "2026-10-24T23:30",
            "2026-10-24T23:45",
            "2026-10-26T00:00",
        ],
    ),
    (
        BERLIN,
        "30 * * * *",
        "2026-10-24T23:00",
        ["2026-10-24T23:30", "2026-10-25T00:30", "2026-10-25T01:30", "2026-10-25T02:30"],
    ),
    (
        BERLIN,
        "*/15 * * * *",
        "2026-10-24T23:50",
        [
            "2026-10-25T00:00",
            "2026-10-25T00:15",
            "2026-10-25T00:30",
            "2026-10-25T00:45",
            "2026-10-25T01:00",
            "2026-10-25T01:15",
            "2026-10-25T01:30",
            "2026-10-25T01:45",
            "2026-10-25T02:00",
        ],
    ),
    (
        BERLIN,
        "0 * * * *",
        "2026-10-24T23:00",
        ["2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00"],
    ),
    (
        BERLIN,
        "0 0-23 * * *",
        "2026-10-24T23:00",
        ["2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00"],
    ),
    # Lord Howe: a 30-minute gap (02:00-02:29) and a 30-minute repeat (01:30-01:59: 14:30Z-
    # 14:59Z at +11, then 15:00Z-15:29Z at +10:30).
    (
        LORD_HOWE,
        "*/15 2 * * *",
        "2026-10-03T12:00",
        ["2026-10-03T15:30", "2026-10-03T15:45", "2026-10-04T15:00", "2026-10-04T15:15"],
    ),
    (LORD_HOWE, "0 2 * * *", "2026-10-03T12:00", ["2026-10-03T15:30", "2026-10-04T15:00"]),
    (LORD_HOWE, "30 2 * * *", "2026-10-03T12:00", ["2026-10-03T15:30", "2026-10-04T15:30"]),
    (LORD_HOWE, "30 1 * * *", "2026-04-04T12:00", ["2026-04-04T14:30", "2026-04-05T15:00"]),
    (
        LORD_HOWE,
        "*/15 1 * * *",
        "2026-04-04T14:00",
        ["2026-04-04T14:15", "2026-04-04T14:30", "2026-04-04T14:45", "2026-04-05T14:30"],
    ),
    (
        LORD_HOWE,
        "*/15 * * * *",
        "2026-04-04T14:00",
        [
            "2026-04-04T14:15",
            "2026-04-04T14:30",
            "2026-04-04T14:45",
            "2026-04-04T15:00",
            "2026-04-04T15:15",
            "2026-04-04T15:30",
            "2026-04-04T15:45",
        ],
    ),
    (
        LORD_HOWE,
        "30 * * * *",
        "2026-04-04T13:00",
        ["2026-04-04T13:30", "2026-04-04T14:30", "2026-04-04T15:00", "2026-04-04T16:00"],
    ),
    (
        LORD_HOWE,
        "0 * * * *",
        "2026-04-04T13:30",
        ["2026-04-04T14:00", "2026-04-04T15:30", "2026-04-04T16:30"],
    ),
    # Santiago changes at midnight: Saturday 23:00-23:59 happens twice (02:00Z-02:59Z at
    # -03, then 03:00Z-03:59Z at -04), and Sunday 00:00-00:59 is skipped in September.
    (
        SANTIAGO,
        "*/30 * * * SAT",
        "2026-04-05T01:50",
        [
            "2026-04-05T02:00",
            "2026-04-05T02:30",
            "2026-04-05T03:00",
            "2026-04-05T03:30",
            "2026-04-11T04:00",
        ],
    ),
    (SANTIAGO, "30 23 * * SAT", "2026-04-05T01:50", ["2026-04-05T02:30", "2026-04-12T03:30"]),
    (SANTIAGO, "0 0 * * SUN", "2026-09-06T00:00", ["2026-09-06T04:00", "2026-09-13T03:00"]),
    (
        SANTIAGO,
        "*/30 * * * SUN",
        "2026-09-06T03:50",
        ["2026-09-06T04:00", "2026-09-06T04:30", "2026-09-06T05:00"],
    ),
]


@pytest.mark.parametrize(("zone", "expression", "start", "expected"), DST_CASES)
def test_dst_transitions(zone: str, expression: str, start: str, expected: list[str]) -> None:
    schedule = CronSchedule.parse(expression, zone)
    instants = [utc(text) for text in expected]
    assert runs(schedule, utc(start), len(expected)) == instants
    assert list(islice(schedule.runs_after(utc(start)), len(expected))) == instants
    assert slots_between(schedule, utc(start), instants[-1]) == instants


def test_a_gap_slot_does_not_run_again_from_inside_its_own_minute() -> None:
    schedule = CronSchedule.parse("30 2 * * *", NEW_YORK)
    assert schedule.next_after(utc("2026-03-08T06:59:59.999999")) == utc("2026-03-08T07:00")
    assert schedule.next_after(utc("2026-03-08T07:00")) == utc("2026-03-09T06:30")
    assert schedule.next_after(utc("2026-03-08T07:00:30")) == utc("2026-03-09T06:30")


# --- every and at -------------------------------------------------------------------------

ANCHOR = utc("2026-01-01T00:00")


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2026-01-01T00:00", "2026-01-01T00:00:30"),
        ("2025-12-31T00:00", "2026-01-01T00:00:30"),  # never the anchor itself
        ("2026-01-01T00:00:29.999999", "2026-01-01T00:00:30"),
        ("2026-01-01T00:00:30", "2026-01-01T00:01:00"),
        ("2026-01-01T01:00:10", "2026-01-01T01:00:30"),
    ],
)
def test_interval_next_after(instant: str, expected: str) -> None:
    assert IntervalSchedule(ANCHOR, 30).next_after(utc(instant)) == utc(expected)


def test_interval_runs_in_real_time_across_dst() -> None:
    # Anchored at 01:30 EST on the spring-forward day; every hour means every 3600 s.
    schedule = IntervalSchedule(datetime(2026, 3, 8, 1, 30, tzinfo=ZoneInfo(NEW_YORK)), 3600)
    assert schedule.next_after(schedule.anchor) == utc("2026-03-08T07:30")
    after_jump = datetime(2026, 3, 8, 3, 30, tzinfo=ZoneInfo(NEW_YORK))  # 07:30Z
    assert schedule.next_after(after_jump) == utc("2026-03-08T08:30")


@pytest.mark.parametrize(("seconds", "anchor"), [(0, ANCHOR), (30, datetime(2026, 1, 1))])
def test_interval_refuses_bad_input(seconds: int, anchor: datetime) -> None:
    with pytest.raises(ValueError, match=r"at least 1 second|timezone-aware"):
        IntervalSchedule(anchor, seconds)


def test_once() -> None:
    schedule = OnceSchedule(datetime(2026, 12, 1, 11, tzinfo=ZoneInfo(BERLIN)))
    result = schedule.next_after(utc("2026-12-01T09:59:59"))
    assert result == utc("2026-12-01T10:00")
    assert result is not None
    assert result.tzinfo is UTC
    assert schedule.next_after(utc("2026-12-01T10:00")) is None
    assert schedule.next_after(utc("2027-01-01T00:00")) is None


# --- slots_between ------------------------------------------------------------------------


def test_slots_between_an_interval_day_of_seconds() -> None:
    schedule = IntervalSchedule(ANCHOR, 1)
    day = (ANCHOR, utc("2026-01-02T00:00"))
    assert slots_between(schedule, *day, limit=1) == [utc("2026-01-02T00:00")]
    assert slots_between(schedule, *day, limit=3) == [
        utc("2026-01-01T23:59:58"),
        utc("2026-01-01T23:59:59"),
        utc("2026-01-02T00:00"),
    ]
    hour = slots_between(schedule, ANCHOR, utc("2026-01-01T01:00"))
    assert len(hour) == 3600
    assert (hour[0], hour[-1]) == (utc("2026-01-01T00:00:01"), utc("2026-01-01T01:00"))


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, ["10:15", "10:30", "10:45", "11:00"]),
        (2, ["10:45", "11:00"]),
        (10, ["10:15", "10:30", "10:45", "11:00"]),
        (0, []),
    ],
)
def test_slots_between_cron(limit: int | None, expected: list[str]) -> None:
    schedule = CronSchedule.parse("*/15 * * * *")
    found = slots_between(schedule, utc("2026-01-15T10:00"), utc("2026-01-15T11:00"), limit)
    assert found == [utc(f"2026-01-15T{text}") for text in expected]


def test_slots_between_cron_keeps_the_latest_of_a_day() -> None:
    schedule = CronSchedule.parse("* * * * *")
    found = slots_between(schedule, utc("2026-01-01T00:00"), utc("2026-01-02T00:00"), limit=1)
    assert found == [utc("2026-01-02T00:00")]


def test_slots_between_coalesces_a_gap() -> None:
    schedule = CronSchedule.parse("*/15 2,3 * * *", NEW_YORK)
    found = slots_between(schedule, utc("2026-03-08T00:00"), utc("2026-03-09T00:00"))
    assert found == [utc(f"2026-03-08T07:{minute}") for minute in ("00", "15", "30", "45")]


@pytest.mark.parametrize(
    ("after", "until", "expected"),
    [
        ("2026-01-01T00:00", "2026-01-01T00:00:30", ["2026-01-01T00:00:30"]),
        ("2026-01-01T00:00:30", "2026-01-01T00:01:00", ["2026-01-01T00:01:00"]),
        ("2026-01-01T00:00:31", "2026-01-01T00:00:59", []),
        ("2026-01-01T00:01:00", "2026-01-01T00:00:00", []),
    ],
)
def test_slots_between_interval_bounds(after: str, until: str, expected: list[str]) -> None:
    found = slots_between(IntervalSchedule(ANCHOR, 30), utc(after), utc(until))
    assert found == [utc(text) for text in expected]


@pytest.mark.parametrize(
    ("after", "until", "limit", "expected"),
    [
        ("2026-12-01T09:00", "2026-12-01T10:00", None, ["2026-12-01T10:00"]),
        ("2026-12-01T09:00", "2026-12-01T11:00", 1, ["2026-12-01T10:00"]),
        ("2026-12-01T09:00", "2026-12-01T11:00", 0, []),
        ("2026-12-01T10:00", "2026-12-01T11:00", None, []),
        ("2026-12-01T09:00", "2026-12-01T09:59", None, []),
    ],
)
def test_slots_between_once(after: str, until: str, limit: int | None, expected: list[str]) -> None:
    found = slots_between(OnceSchedule(utc("2026-12-01T10:00")), utc(after), utc(until), limit)
    assert found == [utc(text) for text in expected]


# --- describe -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "text"),
    [
        (CronSchedule("*/5 * * * *", BERLIN), "*/5 * * * * (Europe/Berlin)"),
        (CronSchedule("  0  9 * * MON-FRI "), "0 9 * * MON-FRI (UTC)"),
        (CronSchedule("@daily"), "@daily (UTC)"),
        (IntervalSchedule(ANCHOR, 30), "every 30s"),
        (IntervalSchedule(ANCHOR, 5400), "every 1h30m"),
        (
            OnceSchedule(datetime(2026, 12, 1, 11, tzinfo=ZoneInfo(BERLIN))),
            "at 2026-12-01T10:00:00Z",
        ),
    ],
)
def test_describe(schedule: CronSchedule | IntervalSchedule | OnceSchedule, text: str) -> None:
    assert describe(schedule) == text


# --- properties ---------------------------------------------------------------------------
# Expressions come from small per-field menus whose allowed values the test knows, so
# matching is checked by this file's own rules rather than by the module under test.


@dataclass(frozen=True)
class Cron:
    minute: tuple[str, frozenset[int]]
    hour: tuple[str, frozenset[int]]
    day: tuple[str, frozenset[int]]
    month: tuple[str, frozenset[int]]
    weekday: tuple[str, frozenset[int]]

    @property
    def expression(self) -> str:
        parts = (self.minute, self.hour, self.day, self.month, self.weekday)
        return " ".join(text for text, _ in parts)

    def matches(self, wall: datetime) -> bool:
        """Standard cron matching of a naive local time, written out independently."""
        in_month = wall.day in self.day[1]
        in_week = wall.isoweekday() % 7 in self.weekday[1]  # Sunday = 0
        if self.day[0] != "*" and self.weekday[0] != "*":
            day_ok = in_month or in_week
        else:
            day_ok = in_month and in_week
        return (
            wall.minute in self.minute[1]
            and wall.hour in self.hour[1]
            and wall.month in self.month[1]
            and day_ok
        )

    @property
    def every_hour(self) -> bool:
        """The hour field allows all 24 hours, so a repeated local time runs twice."""
        return self.hour[1] == frozenset(range(24))


Option = tuple[str, frozenset[int]]


def _options(*options: tuple[str, range | set[int]]) -> list[Option]:
    return [(text, frozenset(values)) for text, values in options]


def _menu(*options: tuple[str, range | set[int]]) -> st.SearchStrategy[Option]:
    return st.sampled_from(_options(*options))


MINUTE_OPTIONS = _options(
    ("*", range(60)),
    ("0", {0}),
    ("30", {30}),
    ("*/15", {0, 15, 30, 45}),
    ("5-20/5", {5, 10, 15, 20}),
    ("0,30", {0, 30}),
    ("59", {59}),
    ("*/7", {0, 7, 14, 21, 28, 35, 42, 49, 56}),
)
HOUR_OPTIONS = _options(
    ("*", range(24)),
    ("*/1", range(24)),
    ("0-23", range(24)),
    ("0-11,12-23", range(24)),
    ("1-23", range(1, 24)),
    ("0", {0}),
    ("1", {1}),
    ("2", {2}),
    ("23", {23}),
    ("1-3", {1, 2, 3}),
    ("2,3", {2, 3}),
    ("*/6", {0, 6, 12, 18}),
)
MINUTES, HOURS = st.sampled_from(MINUTE_OPTIONS), st.sampled_from(HOUR_OPTIONS)
CRONS = st.builds(
    Cron,
    minute=MINUTES,
    hour=HOURS,
    day=_menu(
        ("*", range(1, 32)),
        ("1", {1}),
        ("15", {15}),
        ("29", {29}),
        ("31", {31}),
        ("1-7", range(1, 8)),
        ("*/10", {1, 11, 21, 31}),
    ),
    month=_menu(
        ("*", range(1, 13)),
        ("3", {3}),
        ("3,11", {3, 11}),
        ("OCT-NOV", {10, 11}),
        ("APR", {4}),
        ("*/3", {1, 4, 7, 10}),
    ),
    weekday=_menu(
        ("*", range(7)),
        ("0", {0}),
        ("SUN", {0}),
        ("7", {0}),
        ("MON-FRI", {1, 2, 3, 4, 5}),
        ("6,0", {6, 0}),
        ("SAT-SUN", {6, 0}),
    ),
)
ZONES = st.sampled_from(["UTC", NEW_YORK, BERLIN, LORD_HOWE, SANTIAGO])
TRANSITIONS = [
    (NEW_YORK, utc("2026-03-08T07:00")),
    (NEW_YORK, utc("2026-11-01T06:00")),
    (BERLIN, utc("2026-03-29T01:00")),
    (BERLIN, utc("2026-10-25T01:00")),
    (LORD_HOWE, utc("2026-10-03T15:30")),
    (LORD_HOWE, utc("2026-04-04T15:00")),
    (SANTIAGO, utc("2026-04-05T03:00")),
    (SANTIAGO, utc("2026-09-06T04:00")),
    (NEW_YORK, utc("2027-03-14T07:00")),
    (NEW_YORK, utc("2027-11-07T06:00")),
]
STARTS = st.one_of(
    st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
    st.builds(
        lambda transition, seconds: transition + timedelta(seconds=seconds),
        st.sampled_from([instant for _, instant in TRANSITIONS]),
        st.integers(-36 * 3600, 36 * 3600),
    ),
)


def _schedule(cron: Cron, zone: str) -> CronSchedule:
    try:
        return CronSchedule.parse(cron.expression, zone)
    except ScheduleError:
        assume(False)  # e.g. "31 APR": never fires, refused at parse time
        raise


def _is_gap_end_for(cron: Cron, zone: ZoneInfo, run: datetime) -> bool:
    """`run` is a spring-forward instant and a matching wall-clock minute was skipped."""
    before = (run - timedelta(seconds=1)).astimezone(zone).replace(tzinfo=None)
    after = run.astimezone(zone).replace(tzinfo=None)
    if after - before <= timedelta(seconds=1):  # the wall clock did not jump
        return False
    wall = before.replace(second=0) + MINUTE
    while wall < after:
        if cron.matches(wall):
            return True
        wall += MINUTE
    return False


@settings(max_examples=80, deadline=None, database=None)
@given(cron=CRONS, zone_name=ZONES, start=STARTS)
def test_runs_strictly_increase_and_match(cron: Cron, zone_name: str, start: datetime) -> None:
    schedule, zone = _schedule(cron, zone_name), ZoneInfo(zone_name)
    previous = start
    for _ in range(8):
        run = schedule.next_after(previous)
        assert run is not None
        assert run > previous
        local = run.astimezone(zone)
        # Second occurrences of a repeated local time (fold=1) only for every-hour crons.
        shown = local.fold == 0 or cron.every_hour
        on_the_minute = local.second == local.microsecond == 0
        assert (
            shown and on_the_minute and cron.matches(local.replace(tzinfo=None))
        ) or _is_gap_end_for(cron, zone, run)
        previous = run


def reference_runs(cron: Cron, zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """Brute force over UTC minutes (all offsets here are whole minutes).

    A matching wall-clock minute runs when the clock shows it the first time, and when
    it shows it again after the clocks went back if the hour field allows every hour.
    Matching minutes that a jump forward skipped run at the jump.
    """
    found = []
    instant = after.replace(second=0, microsecond=0)
    previous_wall = (instant - MINUTE).astimezone(zone).replace(tzinfo=None)
    while instant <= until:
        local = instant.astimezone(zone)
        wall = local.replace(tzinfo=None)
        skipped = [previous_wall + MINUTE * n for n in range(1, (wall - previous_wall) // MINUTE)]
        shown = local.fold == 0 or cron.every_hour  # fold=1: the clock shows it again
        due = (shown and cron.matches(wall)) or any(map(cron.matches, skipped))
        if due and instant > after:
            found.append(instant)
        previous_wall, instant = wall, instant + MINUTE
    return found


# Around a transition only the time of day matters; keep the day fields mostly open.
CRONS_AROUND_TRANSITIONS = st.builds(
    Cron,
    minute=MINUTES,
    hour=HOURS,
    day=_menu(("*", range(1, 32)), ("1-7", range(1, 8))),
    month=_menu(("*", range(1, 13))),
    weekday=_menu(("*", range(7)), ("SUN", {0}), ("SAT", {6}), ("MON-FRI", {1, 2, 3, 4, 5})),
)


@settings(max_examples=150, deadline=None, database=None)
@given(cron=CRONS_AROUND_TRANSITIONS, zone_and_transition=st.sampled_from(TRANSITIONS))
def test_no_slot_is_skipped_or_repeated_around_transitions(
    cron: Cron, zone_and_transition: tuple[str, datetime]
) -> None:
    zone_name, transition = zone_and_transition
    schedule = _schedule(cron, zone_name)
    after, until = transition - timedelta(hours=3), transition + timedelta(hours=3)
    expected = reference_runs(cron, ZoneInfo(zone_name), after, until)
    assert slots_between(schedule, after, until) == expected


@settings(max_examples=150, deadline=None, database=None)
@given(
    cron=CRONS_AROUND_TRANSITIONS,
    zone_and_transition=st.sampled_from(TRANSITIONS),
    minutes=st.integers(-150, 150),
    microseconds=st.sampled_from([0, 1, 30_000_000, 59_999_999]),
)
def test_next_after_from_any_instant_near_a_transition(
    cron: Cron, zone_and_transition: tuple[str, datetime], minutes: int, microseconds: int
) -> None:
    """Starting anywhere, including inside either pass of a repeated hour."""
    zone_name, transition = zone_and_transition
    schedule = _schedule(cron, zone_name)
    start = transition + minutes * MINUTE + timedelta(microseconds=microseconds)
    until = start + timedelta(hours=3)
    expected = reference_runs(cron, ZoneInfo(zone_name), start, until)
    chained: list[datetime] = []
    run = schedule.next_after(start)
    while run is not None and run <= until:
        chained.append(run)
        run = schedule.next_after(run)
    assert chained == expected
    assert slots_between(schedule, start, until) == expected
    assert slots_between(schedule, start, until, limit=2) == expected[-2:]


# Every minute and hour menu entry around every transition, so no pairing is left to chance,
# with next_after asked from a grid of instants off the minute (including both passes
# through a repeated hour) and slots_between over the whole window.
@pytest.mark.parametrize(("zone_name", "transition"), TRANSITIONS)
def test_every_menu_entry_against_the_reference(zone_name: str, transition: datetime) -> None:
    zone = ZoneInfo(zone_name)
    any_day, any_month, any_weekday = _options(
        ("*", range(1, 32)), ("*", range(1, 13)), ("*", range(7))
    )
    after, until = transition - timedelta(hours=2), transition + timedelta(hours=2)
    horizon = until + timedelta(hours=2)
    starts = [after + n * timedelta(minutes=7, seconds=13) for n in range(34)]  # 4 hours
    for hour in HOUR_OPTIONS:
        for minute in MINUTE_OPTIONS:
            cron = Cron(minute, hour, any_day, any_month, any_weekday)
            schedule = CronSchedule.parse(cron.expression, zone_name)
            expected = reference_runs(cron, zone, after, horizon)
            window = [run for run in expected if run <= until]
            assert slots_between(schedule, after, until) == window, cron.expression
            for start in starts:
                following = [run for run in expected if run > start]
                run = schedule.next_after(start)
                if following:
                    assert run == following[0], (cron.expression, start)
                else:
                    assert run is None or run > horizon, (cron.expression, start)
