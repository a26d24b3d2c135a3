"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and each one breaks
when a module imports what it must not.

Every case lints a copy of pyproject.toml and the five packages in tmp_path (the folder
layout kept), never the tree: the wrong imports are written into the copy only. The lint
has to analyse the copy, not the tree the editable installs point at; `_lint` checks where
each package resolves before it trusts the result.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# Each root package, by the folder that holds it (the folder that goes on the import path).
PACKAGES = {
    "beatkeeper_core": "core",
    "beatkeeper": "operator",
    "beatkeeper_beat": "beat",
    "beatkeeper_worker": "worker_image",
    "beatkeeper_devenv": "devenv",
}
CONTRACTS: dict[str, str] = {
    contract["id"]: contract["name"]
    for contract in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
}

# Run in `python -I` (no PYTHONPATH, no current directory on sys.path, no user site) with the
# copy's folders put first on sys.path by hand. Why not PYTHONPATH with .venv/bin/lint-imports:
# it works today (the editable installs' finders are appended to sys.meta_path, after the
# path finder, and the root package's .pth entry comes after PYTHONPATH), but an inherited
# PYTHONPATH pointing at the tree, or a later change in how setuptools installs editables,
# would make the lint read the tree and every case would pass or fail for the wrong reason.
# So the script also prints where each root package resolves (grimp finds the packages with
# importlib.util.find_spec, as this does) and the test checks that it is the copy. The venv's
# site-packages stays on the path: grimp and import-linter live there.
_LINT = """
import importlib.util, json, sys
folders, packages, args = json.loads(sys.argv[1])
sys.path[:0] = folders
origins = {name: importlib.util.find_spec(name).origin for name in packages}
print("ORIGINS " + json.dumps(origins), flush=True)
from importlinter.cli import lint_imports_command
lint_imports_command(args, prog_name="lint-imports")
"""
_STATUS = re.compile(r"^(?P<name>.+?) (?P<status>KEPT|BROKEN)(?: \(.*\))?$", re.MULTILINE)


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    for package, folder in PACKAGES.items():
        shutil.copytree(
            REPO / folder / package,
            copy / folder / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    return copy


def _lint(copy: Path) -> tuple[int, str, dict[str, str]]:
    """lint-imports on the copy: exit code, output, and each contract's KEPT or BROKEN."""
    folders = [str(copy / folder) for folder in PACKAGES.values()]
    args = ["--no-logo", "--no-cache", str(copy / "pyproject.toml")]
    result = subprocess.run(
        [sys.executable, "-I", "-c", _LINT, json.dumps([folders, list(PACKAGES), args])],
        cwd=copy,  # lint-imports puts its working directory first on sys.path
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    first, _, rest = result.stdout.partition("\n")
    assert first.startswith("ORIGINS "), output
    for package, origin in json.loads(first.removeprefix("ORIGINS ")).items():
        expected = copy / PACKAGES[package] / package / "__init__.py"
        assert Path(origin) == expected, f"{package} resolves to {origin}, not the copy"
    statuses = {match["name"]: match["status"] for match in _STATUS.finditer(rest)}
    assert set(statuses) == set(CONTRACTS.values()), output
    return result.returncode, output, statuses


def _module(path: str) -> str:
    folder, *parts = Path(path).with_suffix("").parts
    assert folder in PACKAGES.values(), path
    return ".".join(parts)


# (file in the copy, the line appended to it, the import lint-imports reports, the contract).
WRONG_IMPORTS = [
    pytest.param(
        "core/beatkeeper_core/contract.py",
        "import beatkeeper.operator.runtime",
        "beatkeeper.operator.runtime",
        "core",
        id="core-imports-operator",
    ),
    pytest.param(
        "core/beatkeeper_core/schedules.py",
        "import kopf",
        "kopf",
        "core",
        id="core-imports-kopf",
    ),
    pytest.param(
        "operator/beatkeeper/operator/backlog.py",
        "from beatkeeper_worker import app",
        "beatkeeper_worker.app",
        "programs",
        id="operator-imports-worker",
    ),
    pytest.param(
        "worker_image/beatkeeper_worker/sweeper.py",
        "import beatkeeper_beat.scheduler",
        "beatkeeper_beat.scheduler",
        "programs",
        id="worker-imports-beat",
    ),
    pytest.param(
        "operator/beatkeeper/operator/webhook.py",
        "import beatkeeper_devenv.redis",
        "beatkeeper_devenv.redis",
        "devenv",
        id="operator-imports-devenv",
    ),
    pytest.param(
        "worker_image/beatkeeper_worker/execution.py",
        "import kubernetes",
        "kubernetes",
        "no-kubernetes",
        id="worker-imports-kubernetes",
    ),
]


def test_the_contracts_hold_on_an_unchanged_copy(tmp_path: Path) -> None:
    code, output, statuses = _lint(_copy(tmp_path))
    assert code == 0, output
    assert set(statuses.values()) == {"KEPT"}, output


@pytest.mark.parametrize(("path", "line", "imported", "contract"), WRONG_IMPORTS)
def test_a_wrong_import_breaks_its_contract(
    tmp_path: Path, path: str, line: str, imported: str, contract: str
) -> None:
    copy = _copy(tmp_path)
    target = copy / path
    source = target.read_text()
    assert line not in source
    target.write_text(source.rstrip("\n") + f"\n{line}\n")
    code, output, statuses = _lint(copy)
    assert code != 0, output
    assert statuses[CONTRACTS[contract]] == "BROKEN", output
    # The broken contract's report names the import just added.
    assert f"{_module(path)} -> {imported} (l." in output, output
