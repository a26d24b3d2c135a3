"""The run-record stream adapter: the operator's consumer group on `beatkeeper:runs`.

Workers and beat append one record per state change of a run. The operator
reads them in a consumer group with a fixed consumer name, so after a restart it
first re-reads what it had received but not acknowledged (nothing is lost), and
acknowledges a batch only after its status was written.
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

    def read(self, count: int = 500, block_ms: int = 1000) -> list[tuple[str, contract.RunRecord]]:
        """The next batch: our unacknowledged entries first, then new ones."""
        if self._backlog:
            entries = self._read("0", count, None)
            if entries:
                return self._parse(entries)
            self._backlog = False
        return self._parse(self._read(">", count, block_ms))

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

    def _parse(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> list[tuple[str, contract.RunRecord]]:
        parsed, broken = [], []
        for entry_id, fields in entries:
            ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            try:
                parsed.append((ident, contract.RunRecord.from_stream_fields(fields)))
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
