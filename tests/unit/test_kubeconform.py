"""The JSON schemas in `schemas/`, checked by the real kubeconform (built from its
module, cached like helm): it accepts the examples and refuses every bad manifest
that a schema can see; the rest (cron syntax, CEL rules, the pool's allowedTasks)
only `beatkeeper validate` and the webhook can."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from beatkeeper_devenv.build import ensure_kubeconform
from beatkeeper_devenv.settings import DevSettings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
INVALID = importlib.import_module("test_admission").INVALID
LOCATION = str(ROOT / "schemas" / "{{.Group}}" / "{{.ResourceKind}}_{{.ResourceAPIVersion}}.json")
# Refusals the apiserver makes from the OpenAPI schema alone (not CEL, not the webhook).
SCHEMA_REASONS = (
    "should be ",
    "should match",
    "should have",
    "Required value",
    "supported values",
    "must be of type",
    "unknown field",
    "chars long",
)


@pytest.fixture(scope="module")
def kubeconform() -> Path:
    return ensure_kubeconform(DevSettings.from_env(os.environ))


def run(binary: Path, *paths: Path) -> list[dict[str, Any]]:
    """kubeconform's per-resource results (JSON output), with no schema from the network."""
    result = subprocess.run(
        [str(binary), "-strict", "-output", "json", "-verbose", "-schema-location", LOCATION,
         *map(str, paths)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    return list(json.loads(result.stdout)["resources"])


def test_kubeconform_accepts_the_examples(kubeconform: Path) -> None:
    manifests = sorted((ROOT / "examples").glob("*.yaml"))
    results = run(kubeconform, *manifests)
    ours = [r for r in results if r["kind"] in ("ScheduledTask", "WorkerPool")]
    assert len(ours) >= 6
    assert {r["status"] for r in ours} == {"statusValid"}, ours


def test_kubeconform_refuses_every_bad_manifest_a_schema_can_see(
    kubeconform: Path, tmp_path: Path
) -> None:
    expected = {}
    for case, manifest, field, reason in INVALID:
        path = tmp_path / f"{case}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        expected[str(path)] = (case, field, any(marker in reason for marker in SCHEMA_REASONS))
    assert sum(schema for _, _, schema in expected.values()) == 26
    results = {r["filename"]: r for r in run(kubeconform, *map(Path, expected))}
    for filename, (case, field, schema) in expected.items():
        if schema:
            verdict = results[filename]
            assert verdict["status"] == "statusInvalid", (case, verdict)
            leaf = field.rsplit(".", 1)[-1].split("[")[0]
            assert leaf in verdict["msg"], (case, verdict["msg"])
