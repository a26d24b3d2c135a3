"""`beatkeeper validate`: the webhook's checks offline, on the examples and on every
manifest the end-to-end admission test sees refused by the real apiserver."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from beatkeeper import cli
from beatkeeper.api import jsonschema

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
admission_cases: Any = importlib.import_module("test_admission")
INVALID = admission_cases.INVALID
POOL = admission_cases.POOL


def _write(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path


def _validate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["validate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _validate(capsys, "-f", str(ROOT / "examples"))
    assert (code, out) == (0, "")
    assert err.strip().endswith(": valid")
    assert "0 ScheduledTask" not in err


@pytest.mark.parametrize(
    ("manifest_", "field", "reason"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_every_manifest_the_apiserver_refuses_is_refused_with_its_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    manifest_: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    path = _write(tmp_path / "bad.yaml", manifest_)
    pools = _write(tmp_path / "pools.yaml", POOL)
    code, out, _ = _validate(capsys, "-f", str(path), "--pools", str(pools))
    assert code == 1, f"accepted: {json.dumps(manifest_)}"
    name = manifest_.get("metadata", {}).get("name")
    assert out.startswith(f"{path}:{manifest_['kind']}/default/{name}: "), out
    # CEL names a rule's field in its path; the model names it in the message.
    assert field in out or field in out.replace(": ", "."), out


def test_a_task_is_checked_against_its_pool_in_the_same_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "t", "namespace": "team"},
        "spec": {"every": "1m", "workerPool": "p", "task": {"name": "other.job"}},
    }
    pool = {**POOL, "metadata": {"name": "p", "namespace": "team"}}
    listed = {"apiVersion": "v1", "kind": "List", "items": [pool, task]}
    path = _write(tmp_path / "both.yaml", listed)
    code, out, _ = _validate(capsys, "-f", str(path))
    assert code == 1
    assert out.startswith(f"{path}:ScheduledTask/team/t: spec.task.name: ")


def test_a_warning_is_not_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = {**POOL, "spec": {**POOL["spec"], "replicas": 2, "autoscaling": {"maxReplicas": 3}}}
    code, out, err = _validate(capsys, "-f", str(_write(tmp_path / "p.yaml", pool)))
    assert (code, out) == (0, "")
    assert "warning: spec.replicas: ignored while spec.autoscaling is set" in err


def test_the_committed_json_schemas_match_the_models() -> None:
    assert jsonschema.drifted(ROOT / "schemas") == []
