"""Parse specs into models, with the checks the CRD schema and CEL cannot make.

One function per kind turns a raw spec (a mapping as stored in the apiserver)
into a frozen model or raises `InvalidSpec`, whose errors each name the field
path and the reason, e.g. `spec.schedule: "*/61 * * * *": minute 61 is out of
range 0-59`. The admission webhook and the operator's reconcilers share these,
so a spec refused at admission is the same spec marked Stalled=InvalidSpec if it
gets stored while the webhook is down.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from beatkeeper.api.scheduledtask import ScheduledTaskSpec
from beatkeeper.api.workerpool import WorkerPoolSpec
from beatkeeper_core import schedules

_Model = TypeVar("_Model", bound=BaseModel)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidSpec(ValueError):
    """One or more field errors; str() is what kubectl shows and what Stalled says."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(error) for error in self.errors))


def _path(loc: tuple[int | str, ...], root: str) -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _pydantic_message(error: Mapping[str, Any]) -> str:
    kind, context = error["type"], error.get("ctx", {})
    messages = {
        "missing": "is required",
        "extra_forbidden": "is not a known field",
        "greater_than_equal": "must be at least {ge}",
        "less_than_equal": "must be at most {le}",
        "string_pattern_mismatch": "must match {pattern}",
        "literal_error": "must be one of {expected}",
        "timezone_aware": (
            "must be an RFC 3339 time with a zone offset, such as 2026-12-01T09:00:00Z"
        ),
    }
    template = messages.get(kind)
    if template:
        return template.format(**context)
    return str(error["msg"]).removeprefix("Value error, ")


# pydantic reports a value that fits no member of a union once per member, at the
# value's path plus the member's name: an int-or-string quantity `limits.cpu: [1]` at
# `limits.cpu.int` and `limits.cpu.str`, fields that do not exist. Such an error is
# told by its path, which ends one step past a value of the input, not at one.
_UNION_MEMBERS = {"int": "an integer", "str": "a string"}


def _holds(raw: Any, loc: tuple[int | str, ...]) -> bool:
    """Is there a value at `loc` in the input?"""
    value = raw
    for part in loc:
        if isinstance(value, Mapping):
            found = isinstance(part, str) and part in value
        else:
            found = isinstance(value, list | tuple) and isinstance(part, int) and part < len(value)
        if not found:
            return False
        value = value[part]
    return True


def _from_pydantic(error: ValidationError, root: str, raw: Any) -> InvalidSpec:
    errors: list[FieldError] = []
    misses: dict[str, tuple[int, list[str]]] = {}  # path -> (index in errors, union members)
    for e in error.errors():
        loc = tuple(e["loc"])
        if e["type"] != "missing" and loc and not _holds(raw, loc) and _holds(raw, loc[:-1]):
            path = _path(loc[:-1], root)
            index, members = misses.setdefault(path, (len(errors), []))
            members.append(_UNION_MEMBERS.get(str(loc[-1]), str(loc[-1])))
            merged = FieldError(path, "must be " + " or ".join(members))
            errors[index : index + 1] = [merged]
        else:
            errors.append(FieldError(_path(loc, root), _pydantic_message(e)))
    return InvalidSpec(errors)


def _plain(value: Any) -> Any:
    """Deep copy into dicts and lists (kopf hands in read-only mapping views)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _strict(model: type[_Model], raw: Mapping[str, Any]) -> _Model:
    # Strict JSON-mode: no "5" -> 5 coercion the apiserver would not do either.
    return model.model_validate_json(json.dumps(_plain(raw)), strict=True)


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _text(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def schedule_errors(raw: Mapping[str, Any]) -> list[FieldError]:
    """Cron syntax, IANA zone and duration syntax, checked on the raw spec.

    Works on the raw mapping so these are reported together with any schema
    error in the same spec; a bad zone still lets the cron syntax be checked.
    """
    errors = []
    zone = _text(raw, "timeZone") or "UTC"
    try:
        schedules.parse_time_zone(zone)
    except schedules.ScheduleError as error:
        errors.append(FieldError("spec.timeZone", str(error)))
        zone = "UTC"
    cron = _text(raw, "schedule")
    if cron is not None:
        try:
            schedules.CronSchedule.parse(cron, zone)
        except schedules.ScheduleError as error:
            errors.append(FieldError("spec.schedule", str(error)))
    every = _text(raw, "every")
    if every is not None:
        try:
            schedules.parse_duration(every)
        except schedules.ScheduleError as error:
            errors.append(FieldError("spec.every", str(error)))
    return errors


def parse_scheduled_task(raw: Mapping[str, Any] | None) -> ScheduledTaskSpec:
    """The spec as a model, or InvalidSpec naming every field that is wrong.

    Cached by the spec's JSON: every resync re-reads thousands of unchanged
    specs, and the models are immutable, so sharing them is safe.
    """
    return _parse_scheduled_task_json(
        json.dumps(_plain({} if raw is None else raw), sort_keys=True)
    )


@functools.lru_cache(maxsize=20_000)
def _parse_scheduled_task_json(text: str) -> ScheduledTaskSpec:
    raw = json.loads(text)
    errors = schedule_errors(raw) if isinstance(raw, dict) else []  # else: "spec: ... object"
    try:
        spec = _strict(ScheduledTaskSpec, raw)
    except ValidationError as error:
        known = {e.path for e in errors}
        errors += [e for e in _from_pydantic(error, "spec", raw).errors if e.path not in known]
        raise InvalidSpec(errors) from None
    errors += _instant_errors(spec)
    if errors:
        raise InvalidSpec(errors)
    return spec


def _instant_errors(spec: ScheduledTaskSpec) -> list[FieldError]:
    """A one-off `at` is kept and compared in UTC, which has the years 1 to 9999 only."""
    if spec.at is None:
        return []
    try:
        spec.at.astimezone(dt.UTC)
    except OverflowError:
        return [
            FieldError(
                "spec.at",
                f"{_quoted(spec.at.isoformat())} is not between 0001-01-01T00:00:00Z and "
                "9999-12-31T23:59:59Z",
            )
        ]
    return []


def task_allowed(task_name: str, allowed: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(task_name, pattern) for pattern in allowed)


def task_errors(task_name: str, pool_name: str, pool: WorkerPoolSpec) -> list[FieldError]:
    if task_allowed(task_name, pool.allowed):
        return []
    allowed = ", ".join(pool.allowed)
    message = (
        f"{_quoted(task_name)} is not allowed by WorkerPool {_quoted(pool_name)} "
        f"(allowedTasks: {allowed})"
    )
    return [FieldError("spec.task.name", message)]


def check_task_allowed(spec: ScheduledTaskSpec, pool_name: str, pool: WorkerPoolSpec) -> None:
    errors = task_errors(spec.task.name, pool_name, pool)
    if errors:
        raise InvalidSpec(errors)


def _host_error(index: int, host: str) -> FieldError | None:
    try:
        ipaddress.ip_network(host, strict=False)
    except ValueError:
        if _HOSTNAME.match(host):
            return None
        return FieldError(
            f"spec.allowedHosts[{index}]",
            f"{_quoted(host)} is not a host name, an IP address or a network such as 10.0.0.0/8",
        )
    return None


def _glob_error(index: int, pattern: str) -> FieldError | None:
    # fnmatch treats an unclosed "[" as a literal; users almost never mean that.
    if pattern.count("[") != pattern.count("]"):
        return FieldError(
            f"spec.allowedTasks[{index}]", f"{_quoted(pattern)} has an unbalanced [ ] group"
        )
    return None


def _env_errors(spec: WorkerPoolSpec) -> list[FieldError]:
    """A core/v1 EnvVar's name is a string, and required: the Deployment's own
    variables are matched by name against these."""
    errors = []
    for index, item in enumerate(spec.template.env if spec.template else ()):
        path = f"spec.template.env[{index}].name"
        if "name" not in item:
            errors.append(FieldError(path, "is required"))
        elif not isinstance(item["name"], str) or not item["name"]:
            errors.append(FieldError(path, "must be a non-empty string"))
    return errors


def parse_worker_pool(raw: Mapping[str, Any] | None) -> WorkerPoolSpec:
    raw = {} if raw is None else raw
    try:
        spec = _strict(WorkerPoolSpec, raw)
    except ValidationError as error:
        raise _from_pydantic(error, "spec", raw) from None
    errors = [e for i, host in enumerate(spec.allowed_hosts) if (e := _host_error(i, host))]
    errors += [e for i, glob in enumerate(spec.allowed_tasks) if (e := _glob_error(i, glob))]
    errors += _env_errors(spec)
    if errors:
        raise InvalidSpec(errors)
    return spec
