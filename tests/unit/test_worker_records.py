"""Run-record messages are short and never carry credentials."""

from __future__ import annotations

import datetime as dt

import pytest

from beatkeeper_core import records
from beatkeeper_core.contract import RunEnvelope, RunPolicy, RunRecord, RunState, TaskCall

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
ENVELOPE = RunEnvelope.for_slot("ns", "job", NOW, TaskCall(name="app.t"), RunPolicy())


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Error 111 connecting to redis://admin:hunter2@db:6379/0", "hunter2"),
        ("GET https://token@api.example/x failed", "token@"),
        ("bad password=s3cret; retrying", "s3cret"),
        ('{"api_key": "k-123"}', "k-123"),
        ("header Authorization: Bearer eyJhbGciOi.x.y", "eyJhbGciOi"),
        ("url ?token=abc&x=1", "abc"),
    ],
)
def test_credentials_are_redacted(text: str, secret: str) -> None:
    assert secret not in records.redact(text)


def test_redaction_keeps_what_helps_debugging() -> None:
    message = records.redact("Error connecting to redis://admin:hunter2@db:6379/0")
    assert message == "Error connecting to redis://***@db:6379/0"


def test_messages_are_one_line_and_truncated() -> None:
    message = records.short_message("line one\n  line two " + "x" * 1000)
    assert "\n" not in message
    assert len(message) == records.MESSAGE_CHARS
    assert message.endswith("…")


def test_describe_names_the_exception() -> None:
    assert records.describe(ValueError("boom")) == "ValueError: boom"
    assert records.describe(KeyError()) == "KeyError"


def test_records_round_trip_through_the_stream_encoding() -> None:
    record = records.retrying(
        ENVELOPE,
        started=NOW,
        now=NOW,
        next_attempt_at=NOW + dt.timedelta(seconds=3),
        message="m",
        worker="w",
    )
    decoded = RunRecord.from_stream_fields(record.to_stream_fields())
    assert decoded == record
    assert decoded.state is RunState.RETRYING
    assert decoded.time.tzinfo is not None
