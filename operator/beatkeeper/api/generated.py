"""Files generated from the API models (the CRDs, the JSON schemas): write, check, CLI.

Each generator gives a mapping of relative path -> file text; `--write DIR`
writes them, `--check DIR` fails when DIR's copies differ (a drift test).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

Files = Callable[[], Mapping[str, str]]


def write(directory: Path, files: Mapping[str, str]) -> list[Path]:
    written = []
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def drifted(directory: Path, files: Mapping[str, str]) -> list[str]:
    """Names of files in `directory` that differ from the models (or are missing)."""
    return [
        name
        for name, text in files.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]


def main(description: str, files: Files, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", type=Path, action="append", default=[], help="target folder")
    parser.add_argument("--check", type=Path, action="append", default=[], help="fail on drift")
    args = parser.parse_args(argv)
    for directory in args.write:
        for path in write(directory, files()):
            print(f"wrote {path}")
    stale = [f"{d}/{name}" for d in args.check for name in drifted(d, files())]
    if stale:
        raise SystemExit(f"out of date (run --write): {', '.join(stale)}")
