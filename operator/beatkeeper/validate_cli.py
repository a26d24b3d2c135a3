"""`beatkeeper validate -f PATH...`: the admission checks, offline, for CI.

The same checks as the webhook and the CRD schema, with no cluster: every
ScheduledTask and WorkerPool in the files (YAML or JSON, many documents per
file, folders read recursively; `-` is standard input) is parsed by the API
models, and each task is checked against its pool's `allowedTasks` when the pool
is among the files or the `--pools` files. Other kinds are skipped. Each problem
is a line `file:Kind/namespace/name: field: message`; the exit status is 1 when
there is any, 0 otherwise. Warnings (admitted, but not doing what it says) go to
standard error as `file:Kind/namespace/name: warning: ...`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from beatkeeper.api.base import GROUP, VERSION
from beatkeeper.api.validation import FieldError
from beatkeeper.operator import admission

_KINDS = ("ScheduledTask", "WorkerPool")
_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Document:
    source: str
    body: Mapping[str, Any]
    namespace: str

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def label(self) -> str:
        name = (self.body.get("metadata") or {}).get("name") or "<no name>"
        return f"{self.source}:{self.kind}/{self.namespace}/{name}"


def _files(paths: Iterable[str]) -> Iterator[tuple[str, str]]:
    for given in paths:
        if given == "-":
            yield "<stdin>", sys.stdin.read()
            continue
        path = Path(given)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix in _SUFFIXES:
                    yield str(child), child.read_text()
        else:
            yield str(path), path.read_text()


def load(paths: Iterable[str], namespace: str) -> tuple[list[Document], list[str]]:
    """Beatkeeper documents of the files (List kinds unpacked), and load errors."""
    found: list[Document] = []
    problems: list[str] = []
    for source, text in _files(paths):
        try:
            bodies = [body for body in yaml.safe_load_all(text) if body]
        except yaml.YAMLError as error:
            problems.append(f"{source}: not YAML: {error}".replace("\n", " "))
            continue
        for body in bodies:
            items = body.get("items", []) if body.get("kind") == "List" else [body]
            for item in items:
                if not isinstance(item, Mapping) or item.get("kind") not in _KINDS:
                    continue
                if not str(item.get("apiVersion", "")).startswith(f"{GROUP}/"):
                    continue
                meta = item.get("metadata") or {}
                found.append(Document(source, item, str(meta.get("namespace") or namespace)))
    return found, problems


def _metadata_errors(document: Document) -> list[FieldError]:
    errors = []
    if document.body.get("apiVersion") != f"{GROUP}/{VERSION}":
        errors.append(
            FieldError("apiVersion", f"{document.body.get('apiVersion')!r}: use {GROUP}/{VERSION}")
        )
    if not (document.body.get("metadata") or {}).get("name"):
        errors.append(FieldError("metadata.name", "Required value"))
    if not isinstance(document.body.get("spec"), Mapping):
        errors.append(FieldError("spec", "Required value"))
    return errors


def check(documents: list[Document], pool_documents: list[Document]) -> tuple[list[str], list[str]]:
    """(problems, warnings) as printable lines."""
    pools = {
        (doc.namespace, str(doc.body["metadata"]["name"])): doc.body.get("spec") or {}
        for doc in [*pool_documents, *documents]
        if doc.kind == "WorkerPool" and (doc.body.get("metadata") or {}).get("name")
    }
    problems: list[str] = []
    warnings: list[str] = []
    for doc in documents:
        errors = _metadata_errors(doc)
        spec = doc.body.get("spec")
        if isinstance(spec, Mapping):
            if doc.kind == "ScheduledTask":
                errors += admission.scheduled_task_errors(doc.namespace, spec, pools)
            else:
                errors += admission.worker_pool_errors(spec)
                warnings += [
                    f"{doc.label}: warning: {text}" for text in admission.worker_pool_warnings(spec)
                ]
        problems += [f"{doc.label}: {error}" for error in errors]
    return problems, warnings


def main(paths: list[str], pool_paths: list[str], namespace: str, out: TextIO) -> int:
    documents, problems = load(paths, namespace)
    pool_documents, pool_problems = load(pool_paths, namespace)
    found, warnings = check(documents, pool_documents)
    problems += pool_problems + found
    for line in warnings:
        print(line, file=sys.stderr)
    for line in problems:
        print(line, file=out)
    kinds = {kind: sum(doc.kind == kind for doc in documents) for kind in _KINDS}
    summary = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    verdict = f"{len(problems)} problem(s)" if problems else "valid"
    print(f"{summary}: {verdict}", file=sys.stderr)
    return 1 if problems else 0
