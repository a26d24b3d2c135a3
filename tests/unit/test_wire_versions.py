"""The wire formats carry a version and read a newer writer's payloads (rolling upgrades).

Each reader gets what a writer one version ahead would send: a higher version
and fields it does not know, at the top and nested. It reads the payload and
ignores the rest; what it writes always carries its own version.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from beatkeeper.operator.runstatus import RunView, fold, render
from beatkeeper_core import contract
from beatkeeper_worker.execution import parse_envelope

SLOT = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def newer(payload: dict[str, Any], **nested: str) -> dict[str, Any]:
    """`payload` as a writer of the next version would send it."""
    grown = {**payload, "version": contract.WIRE_VERSION + 1, "added_in_v2": {"any": "value"}}
    for field in nested:
        grown[field] = {**grown.get(field, {}), "also_new": True}
    return grown


def envelope() -> contract.RunEnvelope:
    return contract.RunEnvelope.for_slot(
        "ns", "t", SLOT, contract.TaskCall(name="x", args=[1]), contract.RunPolicy()
    )


def test_every_wire_format_carries_its_version_even_without_defaults() -> None:
    for model in (
        envelope(),
        contract.RunRecord.of(envelope(), contract.RunState.PENDING, SLOT),
    ):
        assert json.loads(model.model_dump_json(exclude_defaults=True))["version"] == 1


def test_the_worker_reads_a_newer_envelope() -> None:
    raw = newer(envelope().model_dump(mode="json"), task="", policy="")
    parsed = parse_envelope(raw)
    assert parsed is not None
    assert parsed.run_id == envelope().run_id
    assert parsed.version == contract.WIRE_VERSION + 1
    assert parsed.task.args == [1]


def test_the_operator_reads_a_newer_run_record() -> None:
    record = contract.RunRecord.of(envelope(), contract.RunState.SUCCEEDED, SLOT)
    raw = newer(json.loads(record.model_dump_json()))
    parsed = contract.RunRecord.from_stream_fields({"record": json.dumps(raw)})
    view = RunView.from_status({})
    fold(view, [parsed], 5)
    status = render(view)
    assert status["succeeded"] == 1
    assert status["lastRun"]["state"] == "Succeeded"


def test_beat_reads_a_newer_entry_definition() -> None:
    definition = contract.EntryDefinition(
        name="ns/t",
        namespace="ns",
        object_name="t",
        queue="beatkeeper.ns.p",
        schedule=contract.ScheduleSpec(kind="every", every_seconds=60, anchor=SLOT),
        task=contract.TaskCall(name="x"),
    )
    raw = newer(json.loads(definition.model_dump_json()), schedule="", catch_up="")
    parsed = contract.EntryDefinition.model_validate_json(json.dumps(raw))
    assert parsed.schedule.build().next_after(SLOT) == SLOT + dt.timedelta(minutes=1)
    # The fields the operator compares to decide a rewrite are all still there.
    assert parsed.model_copy(update={"version": 1}) == definition


def test_run_now_ids_never_collide_with_a_scheduled_slot() -> None:
    scheduled = contract.run_id("ns", "t", SLOT)
    run_now = contract.run_id("ns", "t", SLOT, contract.run_now_tag("token-1"))
    assert run_now != scheduled
    assert run_now != contract.run_id("ns", "t", SLOT, contract.run_now_tag("token-2"))
    assert contract.run_now_tag("token-1") == contract.run_now_tag("token-1")
    assert contract.parse_run_id(run_now) == ("ns", "t", SLOT)
