"""The CRDs are generated from the models, and the committed files match them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from beatkeeper.api import crd
from beatkeeper.api.scheduledtask import ScheduledTaskSpec
from beatkeeper.api.workerpool import WorkerPoolSpec

REPO = Path(__file__).resolve().parents[2]


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        found += walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += walk(schema["additionalProperties"], f"{path}{{}}")
    return found


def spec_schema(kind_crd: dict[str, Any], part: str = "spec") -> dict[str, Any]:
    version = kind_crd["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]["properties"][part]


def test_committed_crds_match_the_models() -> None:
    assert crd.drifted(REPO / "crds") == [], "run: python -m beatkeeper.api.crd --write crds"


@pytest.mark.parametrize("name", sorted(crd.all_crds()))
def test_schema_is_structural(name: str) -> None:
    document = crd.all_crds()[name]
    for part in ("spec", "status"):
        for path, node in walk(spec_schema(document, part)):
            typed = (
                "type" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
                or node.get("x-kubernetes-int-or-string")
            )
            assert typed, f"{name} {part}{path} has no type"
            assert "$ref" not in node
            assert "anyOf" not in node


@pytest.mark.parametrize("name", sorted(crd.all_crds()))
def test_every_field_has_a_description(name: str) -> None:
    for part in ("spec", "status"):
        for path, node in walk(spec_schema(crd.all_crds()[name], part)):
            if path and not path.endswith(("[]", "{}")):
                assert node.get("description"), f"{part}{path} lacks a description"


@pytest.mark.parametrize(
    ("model", "crd_name"),
    [
        (ScheduledTaskSpec, "scheduledtasks.beatkeeper.dev.yaml"),
        (WorkerPoolSpec, "workerpools.beatkeeper.dev.yaml"),
    ],
)
def test_fields_required_and_defaults_agree_with_the_model(model: Any, crd_name: str) -> None:
    """Field by field: names, required, defaults (the generator's own output, re-read)."""
    schema = spec_schema(yaml.safe_load((REPO / "crds" / crd_name).read_text().split("\n", 1)[1]))
    fields = {f.alias: f for f in model.model_fields.values()}
    assert set(schema["properties"]) == set(fields)
    assert set(schema.get("required", [])) == {a for a, f in fields.items() if f.is_required()}
    defaults = model.model_validate({**_minimal(model)}).to_api()
    for alias, node in schema["properties"].items():
        if "default" in node:
            assert defaults[alias] == node["default"], alias


def _minimal(model: Any) -> dict[str, Any]:
    if model is ScheduledTaskSpec:
        return {"every": "1m", "workerPool": "p", "task": {"name": "a.b"}}
    return {"image": "w:1"}


def test_enums_bounds_and_cel_rules_are_emitted() -> None:
    st = spec_schema(crd.scheduled_task_crd())["properties"]
    assert st["concurrencyPolicy"]["enum"] == ["Allow", "Forbid", "Replace"]
    assert st["retry"]["properties"]["maxRetries"]["minimum"] == 0
    assert st["retry"]["properties"]["maxRetries"]["maximum"] == 100
    assert st["at"]["format"] == "date-time"
    assert st["task"]["properties"]["args"]["items"]["x-kubernetes-preserve-unknown-fields"]
    rules = spec_schema(crd.scheduled_task_crd())["x-kubernetes-validations"]
    assert any("mutually exclusive" in rule["message"] for rule in rules)
    wp = spec_schema(crd.worker_pool_crd())["properties"]
    assert wp["autoscaling"]["x-kubernetes-validations"][0]["fieldPath"] == ".minReplicas"
    assert wp["template"]["properties"]["resources"]["properties"]["limits"][
        "additionalProperties"
    ] == {"x-kubernetes-int-or-string": True}


def test_scale_subresource_and_printer_columns() -> None:
    version = crd.worker_pool_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
    columns = version["additionalPrinterColumns"]
    names = [c["name"] for c in columns if not c.get("priority")]
    assert names == ["Desired", "Ready", "Backlog", "Active", "Min", "Max", "Age"]
    wide = [c["name"] for c in columns if c.get("priority") == 1]  # -o wide only
    assert wide == ["Queue", "Reason", "Message"]
    st_columns = crd.scheduled_task_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in st_columns if not c.get("priority")] == [
        "Schedule",
        "Suspend",
        "Pool",
        "Last",
        "Last Schedule",
        "Next",
        "Ready",
        "Age",
    ]
    assert [c["name"] for c in st_columns if c.get("priority") == 1] == [
        "Last Run",
        "Attempts",
        "Reason",
        "Message",
    ]


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    crd.write(tmp_path)
    assert crd.drifted(tmp_path) == []
    victim = tmp_path / "workerpools.beatkeeper.dev.yaml"
    victim.write_text(victim.read_text().replace("Highest replica count", "Most replicas"))
    assert crd.drifted(tmp_path) == ["workerpools.beatkeeper.dev.yaml"]
