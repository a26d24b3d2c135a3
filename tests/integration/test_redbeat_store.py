"""The redbeat data model against a real Redis: write only on change, heal, fire, advance."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import redis

from beatkeeper_core import contract
from beatkeeper_core.redbeat import Advance, Outcome, RedbeatStore

T0 = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def store(redis_url: str) -> Iterator[RedbeatStore]:
    client = redis.Redis.from_url(redis_url)
    yield RedbeatStore(client, prefix=f"rb-{uuid.uuid4().hex[:6]}:")
    client.close()


def definition(seconds: int = 60, **changes: object) -> contract.EntryDefinition:
    base = contract.EntryDefinition(
        name="ns/t",
        namespace="ns",
        object_name="t",
        queue="beatkeeper.ns.p",
        schedule=contract.ScheduleSpec(kind="every", every_seconds=seconds, anchor=T0),
        task=contract.TaskCall(name="beatkeeper.sleep"),
    )
    return base.model_copy(update=changes)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_first_write_arms_the_next_slot(store: RedbeatStore) -> None:
    assert store.upsert_if_changed([definition()], at(90)) == [Outcome.WRITTEN]
    entry = store.read(["ns/t"])[0]
    assert entry.next is not None
    assert entry.next.slot == at(120)
    assert entry.score == at(120).timestamp()


def test_unchanged_definition_is_not_rescored_later(store: RedbeatStore) -> None:
    store.upsert_if_changed([definition()], at(90))
    # Minutes later, a resync must not move the entry (that would drift the schedule).
    assert store.upsert_if_changed([definition()], at(400)) == [Outcome.UNCHANGED]
    assert store.read(["ns/t"])[0].score == at(120).timestamp()


def test_changed_definition_is_rewritten_from_now(store: RedbeatStore) -> None:
    store.upsert_if_changed([definition()], at(90))
    assert store.upsert_if_changed([definition(30)], at(95)) == [Outcome.WRITTEN]
    assert store.read(["ns/t"])[0].next.slot == at(120)  # type: ignore[union-attr]
    assert store.upsert_if_changed([definition(7)], at(95)) == [Outcome.WRITTEN]
    assert store.read(["ns/t"])[0].next.slot == at(98)  # type: ignore[union-attr]


def test_lost_score_is_restored_from_next(store: RedbeatStore) -> None:
    store.upsert_if_changed([definition()], at(90))
    store.client.zrem(store.schedule_key, store.key("ns/t"))
    assert store.upsert_if_changed([definition()], at(100)) == [Outcome.RESCORED]
    assert store.read(["ns/t"])[0].score == at(120).timestamp()


def test_disabled_entry_keeps_its_hash_without_a_score(store: RedbeatStore) -> None:
    store.upsert_if_changed([definition(enabled=False)], at(90))
    entry = store.read(["ns/t"])[0]
    assert entry.definition is not None
    assert entry.score is None
    assert entry.next == contract.EntryNext()
    assert store.due(at(10_000), 10) == []


def test_delete_and_names(store: RedbeatStore) -> None:
    other = definition().model_copy(update={"name": "ns/u", "object_name": "u"})
    store.upsert_if_changed([definition(), other], at(0))
    assert store.names() == {"ns/t", "ns/u"}
    store.delete(["ns/t"])
    assert store.names() == {"ns/u"}
    assert store.client.zscore(store.schedule_key, store.key("ns/t")) is None


def test_due_and_advance(store: RedbeatStore) -> None:
    store.upsert_if_changed([definition()], at(90))
    assert store.due(at(119), 10) == []
    [entry] = store.due(at(121), 10)
    assert entry.name == "ns/t"
    advanced = Advance(
        entry.name,
        entry.next,
        definition().next_for(at(180)),
        contract.EntryMeta(last_slot=at(120)),
    )
    assert store.advance([advanced]) == 1
    assert store.read(["ns/t"])[0].score == at(180).timestamp()
    assert store.seconds_until_next_due(at(170)) == pytest.approx(10)


def test_advance_yields_to_an_operator_rewrite(store: RedbeatStore) -> None:
    store.upsert_if_changed([definition()], at(90))
    [entry] = store.due(at(121), 10)
    store.upsert_if_changed([definition(45)], at(121))  # the user edited the schedule meanwhile
    stale = Advance(entry.name, entry.next, definition().next_for(at(180)), contract.EntryMeta())
    assert store.advance([stale]) == 0
    assert store.read(["ns/t"])[0].next.slot == at(135)  # type: ignore[union-attr]
