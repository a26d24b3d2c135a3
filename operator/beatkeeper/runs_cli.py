"""`beatkeeper runs NAMESPACE/NAME`: a ScheduledTask's runs beyond `historyLimit`.

Status keeps the last `historyLimit` finished runs; every state change of every
run is also a record on the Redis stream `beatkeeper:runs` (bounded by
`BEATKEEPER_RECORDS_MAXLEN`, 100,000 by default). This reads that stream from
the newest entry back and shows one line per run, newest first. Under Redis
tenancy the namespace's own stream (`bk:<namespace>:beatkeeper:runs`) holds its
records, and the namespace's credential (its pool's Secret) may read it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import redis

from beatkeeper_core import contract, keys

_BATCH = 2_000


@dataclass
class RunLine:
    """One run, folded from its records (read newest first)."""

    run_id: str
    slot: dt.datetime
    trigger: str
    token: str
    state: str = ""
    attempts: int = 0
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    reason: str = ""
    message: str = ""
    states: list[str] = field(default_factory=list)

    def add(self, record: contract.RunRecord) -> None:
        """Records come newest first: the first one seen is the run's latest state."""
        if not self.state:
            self.state = record.state.value
            self.reason = record.reason
            self.message = record.message
        self.attempts = max(self.attempts, record.attempt)
        self.started = self.started or record.start_time
        if record.state.finished and self.finished is None:
            self.finished = record.completion_time or record.time
        self.states.insert(0, record.state.value)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.run_id,
            "scheduledTime": contract.format_slot(self.slot),
            "trigger": self.trigger,
            "token": self.token or None,
            "state": self.state,
            "attempts": self.attempts,
            "startTime": _time(self.started),
            "completionTime": _time(self.finished),
            "reason": self.reason,
            "message": self.message,
            "states": self.states,
        }


def _time(value: dt.datetime | None) -> str | None:
    return contract.format_time(value) if value else None


def newest_entries(
    client: redis.Redis, stream: str = keys.RUN_RECORDS_STREAM
) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """The stream's entries, newest first, in batches."""
    upper: str | bytes = "+"
    while True:
        batch: list[tuple[bytes, dict[bytes, bytes]]] = client.xrevrange(  # type: ignore[assignment]
            stream, max=upper, min="-", count=_BATCH
        )
        if not batch:
            return
        yield from batch
        if len(batch) < _BATCH:
            return
        upper = b"(" + batch[-1][0]


def stream_of(client: redis.Redis, namespace: str) -> str:
    """The namespace's own stream when it has one (Redis tenancy), else the shared one."""
    own = keys.key_space(namespace).records_stream()
    return own if client.exists(own) else keys.RUN_RECORDS_STREAM


def runs_of(
    client: redis.Redis, object_key: str, limit: int, stream: str = keys.RUN_RECORDS_STREAM
) -> list[RunLine]:
    """The object's newest `limit` runs that the stream still holds, newest first."""
    found: dict[str, RunLine] = {}
    begun: set[str] = set()
    for _ident, fields in newest_entries(client, stream):
        try:
            record = contract.RunRecord.from_stream_fields(fields)
        except ValueError:
            continue  # a notice, or a record of an unknown shape
        if record.object_key != object_key:
            continue
        line = found.get(record.run_id)
        if line is None:
            if len(found) >= limit:
                continue  # keep reading only to finish the runs already listed
            line = found[record.run_id] = RunLine(
                record.run_id, record.slot, record.trigger, record.token
            )
        line.add(record)
        if record.state is contract.RunState.PENDING:
            begun.add(record.run_id)  # a run's first record: nothing older to find
            if len(found) >= limit and begun >= found.keys():
                break
    return sorted(found.values(), key=lambda line: line.slot, reverse=True)


def print_table(lines: list[RunLine], out: TextIO) -> None:
    header = ("RUN", "TRIGGER", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "REASON")
    rows = [
        (
            line.run_id,
            line.trigger + (f"={line.token}" if line.token else ""),
            line.state,
            str(line.attempts),
            _time(line.started) or "-",
            _time(line.finished) or "-",
            line.reason or "-",
        )
        for line in lines
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )


def main(target: str, redis_url: str, limit: int, output: str, out: TextIO) -> int:
    namespace, _, name = target.partition("/")
    if not namespace or not name:
        raise SystemExit(f"runs: {target!r}: give NAMESPACE/NAME")
    try:
        keys.check_namespace(namespace)
    except ValueError as error:
        raise SystemExit(f"runs: {error}") from None
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    stream = keys.RUN_RECORDS_STREAM
    try:
        stream = stream_of(client, namespace)
        lines = runs_of(client, contract.object_key(namespace, name), limit, stream)
    except redis.RedisError as error:
        raise SystemExit(f"runs: cannot read {stream}: {error}") from None
    finally:
        client.close()
    if output == "json":
        print(json.dumps([line.to_json() for line in lines], indent=2), file=out)
    elif lines:
        print_table(lines, out)
    else:
        print(f"no runs of {target} in {stream}", file=out)
    return 0
