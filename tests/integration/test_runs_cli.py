"""`beatkeeper runs NAMESPACE/NAME` against a real Redis stream of run records."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
import redis

from beatkeeper import cli
from beatkeeper_core import contract, keys

T0 = dt.datetime(2026, 6, 1, 8, 0, 0, tzinfo=dt.UTC)
S = contract.RunState


def _envelope(namespace: str, name: str, second: int, **extra: str) -> contract.RunEnvelope:
    return contract.RunEnvelope.for_slot(
        namespace,
        name,
        T0 + dt.timedelta(seconds=second),
        contract.TaskCall(name="x"),
        contract.RunPolicy(),
        **extra,  # type: ignore[arg-type]
    )


def _append(client: redis.Redis, envelope: contract.RunEnvelope, *states: S) -> None:
    for offset, state in enumerate(states):
        when = envelope.slot + dt.timedelta(milliseconds=100 * (offset + 1))
        fields: dict[str, object] = {}
        if state is S.RUNNING:
            fields["start_time"] = when
        if state.finished:
            fields["completion_time"] = when
            fields["reason"] = "" if state is S.SUCCEEDED else "ValueError"
        record = contract.RunRecord.of(envelope, state, when, **fields)
        client.xadd(keys.RUN_RECORDS_STREAM, record.to_stream_fields())  # type: ignore[arg-type]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_runs_lists_the_objects_runs_newest_first_beyond_history(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_url)
    for second in range(12):  # more than any historyLimit default (5)
        final = S.SUCCEEDED if second % 3 else S.FAILED
        _append(client, _envelope(namespace, "report", second), S.PENDING, S.RUNNING, final)
        _append(client, _envelope(namespace, "other", second), S.PENDING)
    now = _envelope(namespace, "report", 20, trigger="run-now", tag="now-abc", token="v7")
    _append(client, now, S.PENDING, S.RUNNING)
    client.close()

    out = _run(["runs", f"{namespace}/report", "--redis-url", redis_url, "--limit", "8"], capsys)
    lines = out.splitlines()
    assert lines[0].split() == [
        "RUN", "TRIGGER", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "REASON"
    ]  # fmt: skip
    assert len(lines) == 9
    assert lines[1].split()[:3] == [now.run_id, "run-now=v7", "Running"]
    assert lines[2].split()[0].endswith("08:00:11Z")
    assert "other" not in out

    listed = json.loads(
        _run(["runs", f"{namespace}/report", "--redis-url", redis_url, "-o", "json"], capsys)
    )
    assert len(listed) == 13
    failed = [run for run in listed if run["state"] == "Failed"]
    assert [run["scheduledTime"][-3:] for run in failed] == ["09Z", "06Z", "03Z", "00Z"]
    assert failed[0]["reason"] == "ValueError"
    assert failed[0]["states"] == ["Pending", "Running", "Failed"]
    assert listed[0]["token"] == "v7"


def test_runs_of_an_unknown_object_says_so(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(["runs", "nowhere/none", "--redis-url", redis_url], capsys)
    assert out.strip() == "no runs of nowhere/none in beatkeeper:runs"


def test_runs_refuses_a_target_without_namespace(redis_url: str) -> None:
    with pytest.raises(SystemExit, match="give NAMESPACE/NAME"):
        cli.main(["runs", "report", "--redis-url", redis_url])
