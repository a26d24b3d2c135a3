"""Shared pieces of the API models: the base class, conditions, CRD schema hints.

The models in this package are the single source of truth for the CRDs: field
names, types, bounds, enums, defaults, descriptions and CEL rules are declared
here once and `beatkeeper.api.crd` turns them into `crds/*.yaml`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints
from pydantic.alias_generators import to_camel

from beatkeeper_core import contract

GROUP = "beatkeeper.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# A ScheduledTask's finalizer: admission adds it, the reconciler removes it once the
# object's redbeat entry is gone (kopf's own is `kopf.` + this, and never on our objects).
FINALIZER = f"{GROUP}/finalizer"

# A time field of status, written in the one time format (`contract.format_time`).
StatusTime = Annotated[
    AwareDatetime, PlainSerializer(contract.format_time, return_type=str, when_used="json")
]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)]


class CRD:
    """Markers read by the CRD generator (json_schema_extra keys)."""

    PRESERVE: ClassVar[dict[str, Any]] = {"x-kubernetes-preserve-unknown-fields": True}
    INT_OR_STRING: ClassVar[dict[str, Any]] = {"x-kubernetes-int-or-string": True}


def cel(
    rule: str, message: str = "", *, message_expression: str = "", field_path: str = ""
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    entry = {"rule": rule}
    if message:
        entry["message"] = message
    if message_expression:
        entry["messageExpression"] = message_expression
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, immutable, strict about extras."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )
    cel_rules: ClassVar[tuple[dict[str, str], ...]] = ()

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """The kstatus shape: Ready, Reconciling and Stalled (and ScalingLimited on pools)."""

    type: str = Field(description="Condition type: Ready, Reconciling, Stalled, or ScalingLimited.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One CamelCase word for the last transition.")
    message: str = Field(default="", description="Human-readable details of the condition.")
    last_transition_time: StatusTime = Field(description="When the condition last changed status.")
    observed_generation: int = Field(
        default=0, ge=0, description="The metadata.generation this condition was computed for."
    )

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def conditions_field() -> Any:
    return Field(
        default_factory=list,
        description="The current state as kstatus reads it: Ready, Reconciling, Stalled.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
