"""The run-record stream adapter: the operator's consumer group on `beatkeeper:runs`.

Workers and beat append one record per state change of a run. The operator
reads them in a consumer group with a fixed consumer name, so after a restart it
first re-reads what it had received but not acknowledged (nothing is lost), and
acknowledges a batch only after its status was written. Records that cannot be
applied (their object's status keeps refusing them) are parked in
`beatkeeper:runs:parked` with the error, never re-read forever; `parked()`
counts them. Under Redis tenancy each namespace's workers write their own
stream (`bk:<namespace>:beatkeeper:runs`), and the group reads them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import redis
from pydantic import ValidationError

from beatkeeper_core import contract, keys

logger = logging.getLogger(__name__)

GROUP = "beatkeeper-operator"
CONSUMER = "operator"  # one operator replica runs at a time (Recreate)
Entry = contract.RunRecord | contract.ObjectNotice
PARKED_MAXLEN = 100_000


@dataclass(frozen=True)
class EntryRef:
    """Where an entry was read: its stream, its id, and the namespace whose key space the
    stream is in (Redis tenancy; "" for the root stream, which any namespace may use)."""

    stream: str
    id: str
    namespace: str = ""


@dataclass
class RunRecordStream:
    """The operator's consumer group on the root stream and, under Redis tenancy, on the
    stream of every namespace `namespaces()` names (those with pools or tasks).

    An entry of a namespace's stream is that namespace's word only: the consumer
    checks that it is about an object of that namespace (`EntryRef.namespace`).
    """

    client: redis.Redis
    namespaces: Callable[[], Iterable[str]] | None = None  # None: tenancy off
    group: str = GROUP
    consumer: str = CONSUMER
    _backlog: bool = field(default=True, init=False)  # re-read our pending entries first
    _grouped: set[str] = field(default_factory=set, init=False)

    def streams(self) -> dict[str, str]:
        """Stream name -> namespace ("" for the root stream)."""
        found = {keys.RUN_RECORDS_STREAM: ""}
        for namespace in sorted(set(self.namespaces()) if self.namespaces else ()):
            found[keys.key_space(namespace).records_stream()] = namespace
        return found

    def ensure_group(self, streams: Iterable[str] | None = None) -> None:
        for stream in self.streams() if streams is None else streams:
            if stream in self._grouped:
                continue
            try:
                self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
            self._grouped.add(stream)

    def read(self, count: int = 500, block_ms: int = 1000) -> list[tuple[EntryRef, Entry]]:
        """The next batch: our unacknowledged entries (when asked), then new ones.

        New entries are read every time, so records held back for one object
        (its status refuses them for now) never keep the others waiting.
        """
        streams = self.streams()
        if self.namespaces is not None:
            self.ensure_group(streams)  # namespaces come and go
        pending = (
            self._parse(streams, self._read(streams, "0", count, None)) if self._backlog else []
        )
        self._backlog = False
        fresh = self._read(streams, ">", count, None if pending else block_ms)
        return pending + self._parse(streams, fresh)

    def _read(
        self, streams: Mapping[str, str], start: str, count: int, block_ms: int | None
    ) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        reply = self.client.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(streams, start),
            count=count,
            block=block_ms,
        )
        if not reply:
            return []
        found = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply)
        return [
            (name.decode() if isinstance(name, bytes) else str(name), entry_id, fields)
            for name, entries in found
            for entry_id, fields in entries
        ]

    def _parse(
        self, streams: Mapping[str, str], entries: list[tuple[str, bytes, dict[bytes, bytes]]]
    ) -> list[tuple[EntryRef, Entry]]:
        parsed: list[tuple[EntryRef, Entry]] = []
        broken = []
        for stream, entry_id, fields in entries:
            ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            ref = EntryRef(stream, ident, streams.get(stream, ""))
            try:
                notice = fields.get(b"notice") or fields.get("notice")  # type: ignore[call-overload]
                parsed.append(
                    (ref, contract.ObjectNotice.model_validate_json(notice))
                    if notice is not None
                    else (ref, contract.RunRecord.from_stream_fields(fields))
                )
            except (ValidationError, ValueError) as error:
                logger.error("dropping unreadable run record %s %s: %s", stream, ident, error)
                broken.append(ref)
        self.ack(broken)
        return parsed

    def reread_pending(self) -> None:
        """Deliver our unacknowledged entries again on the next read."""
        self._backlog = True

    def ack(self, refs: Iterable[EntryRef]) -> None:
        by_stream: dict[str, list[str]] = {}
        for ref in refs:
            by_stream.setdefault(ref.stream, []).append(ref.id)
        for stream, ids in by_stream.items():
            self.client.xack(stream, self.group, *ids)

    def park(self, entries: list[tuple[EntryRef, contract.RunRecord]], error: str) -> None:
        """Move records that cannot be applied to the parked stream, then acknowledge them."""
        with self.client.pipeline(transaction=True) as pipe:
            for ref, record in entries:
                fields = {**record.to_stream_fields(), "entry": ref.id, "error": error[:1000]}
                if ref.namespace:
                    fields["stream"] = ref.stream
                pipe.xadd(keys.PARKED_STREAM, fields, maxlen=PARKED_MAXLEN, approximate=True)  # type: ignore[arg-type]
            for ref, _ in entries:
                pipe.xack(ref.stream, self.group, ref.id)
            pipe.execute()

    def parked(self) -> int:
        return int(self.client.xlen(keys.PARKED_STREAM))

    def progress(self) -> tuple[int, int, int]:
        """(lag, pending, parked): records not read yet by the operator's group, read
        but not acknowledged, and set aside (every stream)."""
        lag = pending = 0
        for stream in self.streams():
            try:
                groups = self.client.xinfo_groups(stream)
            except redis.ResponseError:  # no stream yet
                groups = []
            for group in groups:
                name = group.get("name")
                if (name.decode() if isinstance(name, bytes) else name) == self.group:
                    lag += int(group.get("lag") or 0)
                    pending += int(group.get("pending") or 0)
        return lag, pending, self.parked()
