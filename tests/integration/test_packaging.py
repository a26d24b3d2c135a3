"""Each image's part of the repository, pip-installed into an empty virtualenv as its
Dockerfile installs it, brings only what that image needs: the worker part (core and
worker) no kopf, no Kubernetes client and no other program; the operator part (core, beat
and the operator with its CLI) no worker and no local environment.

The installs are real (non-editable, built by setuptools) and pinned by constraints.txt.
They read the image builds' wheelhouse (`make images`, under the dev cache) with no index
when it has wheels for this Python, and PyPI otherwise.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beatkeeper_devenv.settings import DevSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# What the Dockerfiles COPY into their build stage (.dockerignore lets nothing else in).
SOURCES = (
    "constraints.txt",
    "pyproject.toml",
    "README.md",
    "core",
    "beat",
    "worker_image",
    "operator/beatkeeper",
)
# Variables that would change what pip installs or where, or what the new venv imports.
_UNSET = {
    "PYTHONPATH",
    "PYTHONHOME",
    "PIP_CONSTRAINT",
    "PIP_NO_INDEX",
    "PIP_FIND_LINKS",
    "PIP_TARGET",
    "PIP_PREFIX",
    "PIP_USER",
    "PIP_REQUIRE_VIRTUALENV",
}
# Run by the new venv's Python: what is installed, and where each module imports from.
_PROBE = """
import importlib, importlib.metadata, json, sys
imports = {}
for name in sys.argv[1:]:
    try:
        imports[name] = importlib.import_module(name).__file__
    except ModuleNotFoundError as error:
        imports[name] = "missing " + str(error.name)
names = sorted(d.metadata["Name"] for d in importlib.metadata.distributions())
print(json.dumps({"distributions": names, "imports": imports}))
"""


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _UNSET}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheelhouse() -> Path | None:
    """The image builds' wheelhouse, if one was made for this Python's ABI and machine.

    `make images` downloads it (beatkeeper_devenv.images, Builder.wheelhouse) for the
    base image's Python (Debian's 3.11) into cache_dir/images/wheels/<key>, the key a digest
    of constraints.txt and that Python, with `.complete` written last. Wheels of the
    newest complete one serve this interpreter when their cpXY tag and machine are its own.
    It may be older than constraints.txt (the key then differs): `-c constraints.txt` with
    `--no-index` installs only the pinned versions, or fails if the wheelhouse lacks one,
    and `_install` then uses the index. It holds setuptools (constraints.txt pins it), the
    build backend pip's isolated builds install, so the builds need no index either.
    """
    wheels = DevSettings.from_env(os.environ).cache_dir / "images" / "wheels"
    tag = f"-cp{sys.version_info.major}{sys.version_info.minor}-"
    machine = platform.machine()
    complete = [folder for folder in wheels.glob("*") if (folder / ".complete").exists()]
    for folder in sorted(complete, key=lambda f: (f / ".complete").stat().st_mtime, reverse=True):
        names = [wheel.name for wheel in folder.glob("*.whl")]
        if any(tag in name and machine in name for name in names):
            return folder
    return None


def _sources(tmp_path: Path) -> Path:
    """A copy of the build context: setuptools writes build/ and *.egg-info into the
    folders it builds, which must not happen in the tree (nor race another build there)."""
    copy = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for source in SOURCES:
        path = REPO / source
        if path.is_dir():
            shutil.copytree(path, copy / source, ignore=ignore)
        else:
            (copy / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, copy / source)
    return copy


def _install(tmp_path: Path, *parts: str) -> tuple[Path, str]:
    """`pip install -c constraints.txt <parts>` into a new empty venv: the venv, and where
    the wheels came from. The venv has no pip of its own (`--without-pip`): this test's pip
    installs into it with `--python`, so what it holds is exactly what the parts pulled."""
    src = _sources(tmp_path)
    wheelhouse = _wheelhouse()
    attempts: list[tuple[str, list[str]]] = []
    if wheelhouse is not None:
        attempts.append((f"wheelhouse {wheelhouse}", ["--no-index", f"--find-links={wheelhouse}"]))
    attempts.append(("the package index", []))
    for origin, index in attempts:
        venv = tmp_path / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(venv / "bin" / "python"),
                "install",
                "--no-input",
                "-c",
                "constraints.txt",
                *index,
                *parts,
            ],
            cwd=src,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        output = result.stdout + result.stderr
        if result.returncode == 0:
            return venv, origin
        # Only a pin the wheelhouse has no wheel for sends the install to the index.
        missing = "No matching distribution found" in output or "ResolutionImpossible" in output
        if not (index and missing):
            pytest.fail(f"pip install {' '.join(parts)} from {origin} failed:\n{output[-6000:]}")
    raise AssertionError("unreachable")


def _probe(venv: Path, modules: list[str]) -> tuple[set[str], dict[str, str]]:
    result = subprocess.run(
        # -I: no PYTHONPATH, no current directory, no user site: the venv's packages only.
        [str(venv / "bin" / "python"), "-I", "-c", _PROBE, *modules],
        cwd=venv,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    return {_canonical(name) for name in found["distributions"]}, found["imports"]


# (the parts pip installs, as the Dockerfile does; the distributions that must be installed
# and must not be; the modules that must import from the venv and those that must be absent;
# the console scripts the image runs).
PARTS = [
    pytest.param(
        ("./core", "./worker_image"),
        {"beatkeeper-core", "beatkeeper-worker", "celery", "redis", "pydantic"},
        {
            "kopf",
            "kubernetes",
            "cryptography",
            "beatkeeper",
            "beatkeeper-beat",
            "beatkeeper-devenv",
            "celery-redbeat",
        },
        ["beatkeeper_worker.app", "beatkeeper_worker.main"],
        ["beatkeeper", "beatkeeper_devenv", "beatkeeper_beat", "kopf", "kubernetes"],
        ["beatkeeper-worker"],
        id="worker-image",
    ),
    pytest.param(
        ("./core", "./beat", "."),
        {"beatkeeper-core", "beatkeeper-beat", "beatkeeper", "kopf", "celery-redbeat"},
        {"beatkeeper-worker", "beatkeeper-devenv"},
        # beatkeeper.cli: the image's entry point (`beatkeeper operator`, `beatkeeper beat`).
        ["beatkeeper.operator.main", "beatkeeper_beat.scheduler", "beatkeeper.cli"],
        ["beatkeeper_worker", "beatkeeper_devenv"],
        ["beatkeeper", "beatkeeper-beat"],
        id="operator-image",
    ),
]


@pytest.mark.parametrize(
    ("parts", "installed", "not_installed", "importable", "absent", "scripts"), PARTS
)
def test_an_image_part_installs_only_its_distributions(
    tmp_path: Path,
    parts: tuple[str, ...],
    installed: set[str],
    not_installed: set[str],
    importable: list[str],
    absent: list[str],
    scripts: list[str],
) -> None:
    started = time.monotonic()
    venv, origin = _install(tmp_path, *parts)
    # Shown with `pytest -rP` (record_property would warn under junit_family xunit2).
    print(f"{' '.join(parts)}: installed from {origin} in {time.monotonic() - started:.1f} s")
    distributions, imports = _probe(venv, [*importable, *absent])

    assert installed <= distributions, f"from {origin}: {sorted(distributions)}"
    assert not not_installed & distributions, f"from {origin}: {sorted(distributions)}"
    for module in importable:
        # Non-editable: the installed copy, not the tree through an editable finder.
        assert imports[module].startswith(str(venv)), (module, imports[module])
    for module in absent:
        assert imports[module] == f"missing {module}", (module, imports[module])
    for script in scripts:
        assert (venv / "bin" / script).exists(), script
