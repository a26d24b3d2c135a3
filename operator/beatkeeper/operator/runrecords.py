"""The run-record stream adapter: the operator's consumer group on `beatkeeper:runs`.

Workers and beat append one record per state change of a run. The operator
reads them in a consumer group with a fixed consumer name, so after a restart it
first re-reads what it had received but not acknowledged (nothing is lost), and
acknowledges a batch only after its status was written. Records that cannot be
applied (their object's status keeps refusing them) are parked in
`beatkeeper:runs:parked` with the error, never re-read forever; `parked()`
counts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import cast

import redis
from pydantic import ValidationError

from beatkeeper_core import contract

logger = logging.getLogger(__name__)

GROUP = "beatkeeper-operator"
CONSUMER = "operator"  # one operator replica runs at a time (Recreate)
PARKED_STREAM = f"{contract.RUN_RECORDS_STREAM}:parked"
Entry = contract.RunRecord | contract.ObjectNotice
PARKED_MAXLEN = 100_000


@dataclass
class RunRecordStream:
    client: redis.Redis
    stream: str = contract.RUN_RECORDS_STREAM
    group: str = GROUP
    consumer: str = CONSUMER
    _backlog: bool = field(default=True, init=False)  # re-read our pending entries first

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read(self, count: int = 500, block_ms: int = 1000) -> list[tuple[str, Entry]]:
        """The next batch: our unacknowledged entries (when asked), then new ones.

        New entries are read every time, so records held back for one object
        (its status refuses them for now) never keep the others waiting.
        """
        pending = self._parse(self._read("0", count, None)) if self._backlog else []
        self._backlog = False
        return pending + self._parse(self._read(">", count, None if pending else block_ms))

    def _read(
        self, start: str, count: int, block_ms: int | None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
        )
        if not reply:
            return []
        streams = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply)
        return list(streams[0][1])

    def _parse(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[str, Entry]]:
        parsed: list[tuple[str, Entry]] = []
        broken = []
        for entry_id, fields in entries:
            ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            try:
                notice = fields.get(b"notice") or fields.get("notice")  # type: ignore[call-overload]
                parsed.append(
                    (ident, contract.ObjectNotice.model_validate_json(notice))
                    if notice is not None
                    else (ident, contract.RunRecord.from_stream_fields(fields))
                )
            except (ValidationError, ValueError) as error:
                logger.error("dropping unreadable run record %s: %s", ident, error)
                broken.append(ident)
        self.ack(broken)
        return parsed

    def reread_pending(self) -> None:
        """Deliver our unacknowledged entries again on the next read."""
        self._backlog = True

    def ack(self, ids: list[str]) -> None:
        if ids:
            self.client.xack(self.stream, self.group, *ids)

    def park(self, entries: list[tuple[str, contract.RunRecord]], error: str) -> None:
        """Move records that cannot be applied to the parked stream, then acknowledge them."""
        with self.client.pipeline(transaction=True) as pipe:
            for ident, record in entries:
                fields = {**record.to_stream_fields(), "entry": ident, "error": error[:1000]}
                pipe.xadd(PARKED_STREAM, fields, maxlen=PARKED_MAXLEN, approximate=True)  # type: ignore[arg-type]
            pipe.xack(self.stream, self.group, *[ident for ident, _ in entries])
            pipe.execute()

    def parked(self) -> int:
        return int(self.client.xlen(PARKED_STREAM))

    def progress(self) -> tuple[int, int, int]:
        """(lag, pending, parked): records not read yet by the operator's group, read
        but not acknowledged, and set aside."""
        lag = pending = 0
        try:
            groups = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:  # no stream yet
            groups = []
        for group in groups:
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                lag, pending = int(group.get("lag") or 0), int(group.get("pending") or 0)
        return lag, pending, self.parked()
