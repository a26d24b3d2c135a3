"""Generate the CustomResourceDefinitions from the pydantic models.

The models are the single source of truth; `crds/*.yaml` and the chart's copy are
generated from them (`python -m beatkeeper.api.crd --write crds`), and a test
fails when the committed files drift from what this module produces.

The walk emits structural OpenAPI v3: every node has a type (or an explicit
x-kubernetes-preserve-unknown-fields / int-or-string), no $ref, no anyOf.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import AwareDatetime, BaseModel, JsonValue
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from beatkeeper.api import generated, scheduledtask, workerpool
from beatkeeper.api.base import GROUP, VERSION

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_CONSTRAINTS = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "minimum",
    "lt": "maximum",
    "min_length": "minLength",
    "max_length": "maxLength",
    "pattern": "pattern",
}


class SchemaError(TypeError):
    pass


def _non_none(args: tuple[Any, ...]) -> list[Any]:
    return [arg for arg in args if arg is not type(None)]


def _annotated_schema(annotation: Any) -> dict[str, Any]:
    base, *metadata = typing.get_args(annotation)
    schema = type_schema(base)
    for item in metadata:
        if isinstance(item, FieldInfo):
            schema = {**schema, **_extra(item)}
            for constraint in item.metadata:
                schema = _constrain(schema, constraint)
        else:
            schema = _constrain(schema, item)
    return schema


def _union_schema(annotation: Any) -> dict[str, Any]:
    args = _non_none(typing.get_args(annotation))
    if set(args) == {int, str}:
        return {"x-kubernetes-int-or-string": True}
    if len(args) != 1:
        raise SchemaError(f"unions other than X | None cannot be structural: {annotation}")
    return type_schema(args[0])


def _generic_schema(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list:
        return {"type": "array", "items": type_schema(args[0])}
    if origin is dict:
        values = type_schema(args[1])
        if values.get("x-kubernetes-preserve-unknown-fields") and "type" not in values:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": values}
    if origin is typing.Literal:
        return {"type": "string", "enum": list(args)}
    raise SchemaError(f"no schema for {annotation!r}")


def _simple_schema(annotation: Any) -> dict[str, Any] | None:
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if annotation in (AwareDatetime, dt.datetime):
        return {"type": "string", "format": "date-time"}
    if annotation is JsonValue or annotation is Any:
        return {"x-kubernetes-preserve-unknown-fields": True}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_schema(annotation)
    return None


def type_schema(annotation: Any) -> dict[str, Any]:
    """OpenAPI v3 for a Python annotation used in the API models."""
    simple = _simple_schema(annotation)
    if simple is not None:
        return simple
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _annotated_schema(annotation)
    if origin in (typing.Union, types.UnionType):
        return _union_schema(annotation)
    return _generic_schema(annotation)


def _length_key(schema: dict[str, Any], key: str) -> str:
    # pydantic's min/max_length means items for lists and properties for dicts.
    if key in ("minLength", "maxLength"):
        if schema.get("type") == "array":
            return key.replace("Length", "Items")
        if schema.get("type") == "object":
            return key.replace("Length", "Properties")
    return key


def _constrain(schema: dict[str, Any], constraint: Any) -> dict[str, Any]:
    schema = dict(schema)
    for attribute, key in _CONSTRAINTS.items():
        value = getattr(constraint, attribute, None)
        if value is None:
            continue
        schema[_length_key(schema, key)] = value
        if attribute in ("gt", "lt"):
            schema["exclusiveMinimum" if attribute == "gt" else "exclusiveMaximum"] = True
    return schema


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def _default(field: FieldInfo) -> Any:
    """The CRD default: scalars and nested objects; never empty collections or None."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return None
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list | dict):
        return value or None
    return value


def field_schema(field: FieldInfo) -> dict[str, Any]:
    schema = type_schema(field.annotation)
    for constraint in field.metadata:
        schema = _constrain(schema, constraint)
    extra = _extra(field)
    if "items" in extra and "items" in schema:
        extra["items"] = {**schema["items"], **extra["items"]}
    schema.update(extra)
    if not field.description:
        raise SchemaError(f"field without a description: {field}")
    default = _default(field)
    schema["description"] = field.description
    if default is not None and not field.is_required():
        schema["default"] = default
        # kubectl explain shows descriptions, not defaults.
        if not isinstance(default, dict):
            schema["description"] += f" Default: {_describe_default(default)}."
    return schema


def _describe_default(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        properties[alias] = field_schema(field)
        if field.is_required():
            required.append(alias)
    schema: dict[str, Any] = {"type": "object"}
    if model.__doc__:
        schema["description"] = " ".join(model.__doc__.split())
    schema["properties"] = properties
    if required:
        schema["required"] = required
    rules = getattr(model, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [dict(rule) for rule in rules]
    return schema


def _column(name: str, path: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "jsonPath": path, **extra}


def _ready_column() -> dict[str, Any]:
    return _column("Ready", '.status.conditions[?(@.type=="Ready")].status')


def _age_column() -> dict[str, Any]:
    return _column("Age", ".metadata.creationTimestamp", "date")


def _wide_ready_columns() -> list[dict[str, Any]]:
    """`-o wide` only (priority 1): why Ready is what it is."""
    ready = '.status.conditions[?(@.type=="Ready")]'
    return [
        _column("Reason", f"{ready}.reason", priority=1),
        _column("Message", f"{ready}.message", priority=1),
    ]


def _crd(
    *,
    kind: str,
    plural: str,
    short_name: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
    subresources: dict[str, Any],
) -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": " ".join((spec.__doc__ or "").split()),
        "properties": {
            "apiVersion": {"type": "string", "description": "beatkeeper.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": model_schema(spec),
            # Defaulted so that an object the operator has not seen yet reads
            # observedGeneration 0 < generation: kstatus, Flux and Argo CD wait.
            "status": {**model_schema(status), "default": {}},
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["beatkeeper"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def scheduled_task_crd() -> dict[str, Any]:
    columns = [
        _column("Schedule", ".status.schedule"),
        _column("Suspend", ".spec.suspend", "boolean"),
        _column("Pool", ".spec.workerPool"),
        _column("Last", ".status.lastRun.state"),
        _column("Last Schedule", ".status.lastScheduleTime", "date"),
        _column("Next", ".status.nextScheduleTime"),
        _ready_column(),
        _age_column(),
        _column("Last Run", ".status.lastRun.id", priority=1),
        _column("Attempts", ".status.lastRun.attempts", "integer", priority=1),
        *_wide_ready_columns(),
    ]
    return _crd(
        kind=scheduledtask.KIND,
        plural=scheduledtask.PLURAL,
        short_name="st",
        spec=scheduledtask.ScheduledTaskSpec,
        status=scheduledtask.ScheduledTaskStatus,
        columns=columns,
        subresources={"status": {}},
    )


def worker_pool_crd() -> dict[str, Any]:
    columns = [
        _column("Desired", ".status.desiredReplicas", "integer"),
        _column("Ready", ".status.readyReplicas", "integer"),
        _column("Backlog", ".status.backlog", "integer"),
        _column("Active", ".status.active", "integer"),
        _column("Min", ".spec.autoscaling.minReplicas", "integer"),
        _column("Max", ".spec.autoscaling.maxReplicas", "integer"),
        _age_column(),
        _column("Queue", ".status.queue", priority=1),
        *_wide_ready_columns(),
    ]
    scale = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    return _crd(
        kind=workerpool.KIND,
        plural=workerpool.PLURAL,
        short_name="wp",
        spec=workerpool.WorkerPoolSpec,
        status=workerpool.WorkerPoolStatus,
        columns=columns,
        subresources={"status": {}, "scale": scale},
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    crds = [scheduled_task_crd(), worker_pool_crd()]
    return {f"{crd['metadata']['name']}.yaml": crd for crd in crds}


_HEADER = (
    "# Generated by `python -m beatkeeper.api.crd --write crds` from beatkeeper.api; do not edit.\n"
)


def render(crd: dict[str, Any]) -> str:
    return _HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)


def rendered() -> dict[str, str]:
    """File name -> the CRD file's text."""
    return {name: render(crd) for name, crd in all_crds().items()}


def write(directory: Path) -> list[Path]:
    return generated.write(directory, rendered())


def drifted(directory: Path) -> list[str]:
    """Names of CRD files in `directory` that differ from the models (or are missing)."""
    return generated.drifted(directory, rendered())


def main() -> None:
    generated.main(__doc__.splitlines()[0], rendered)


if __name__ == "__main__":
    main()
