"""kstatus conditions (Ready, Reconciling, Stalled) computed as a whole value.

Pure: the previous conditions, the health the planner decided, the generation
and `now` go in; the new list comes out, keeping lastTransitionTime for every
condition whose status did not flip.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from beatkeeper.api.base import Condition, ConditionStatus

HealthState = Literal["ready", "reconciling", "stalled"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes event a planner wants posted on the object."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str  # stable per reason and object, so repeats aggregate into one Event
    # Details that differ per occurrence (a run id), on the Event's annotations.
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """The planner's verdict on one object."""

    state: HealthState
    reason: str
    message: str = ""

    @classmethod
    def ready(cls, reason: str, message: str = "") -> Health:
        return cls("ready", reason, message)

    @classmethod
    def reconciling(cls, reason: str, message: str = "") -> Health:
        return cls("reconciling", reason, message)

    @classmethod
    def stalled(cls, reason: str, message: str = "") -> Health:
        return cls("stalled", reason, message)


def _status(flag: bool) -> ConditionStatus:
    return "True" if flag else "False"


def _desired(health: Health) -> dict[str, tuple[ConditionStatus, str, str]]:
    reason, message = health.reason, health.message
    return {
        "Ready": (_status(health.state == "ready"), reason, message),
        "Reconciling": (_status(health.state == "reconciling"), reason, message),
        "Stalled": (_status(health.state == "stalled"), reason, message),
    }


def condition(
    previous: Condition | None,
    *,
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> Condition:
    flipped = previous is None or previous.status != status
    now = now.replace(microsecond=0)
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if flipped or previous is None else previous.last_transition_time,
        observed_generation=generation,
    )


def parse_conditions(raw: Sequence[Any] | None) -> list[Condition]:
    """Conditions as found in status; unreadable entries are dropped, not fatal."""
    result = []
    for item in raw or ():
        try:
            result.append(Condition.model_validate(item))
        except ValueError:
            continue
    return result


def health_conditions(
    previous: Sequence[Condition],
    health: Health,
    generation: int,
    now: dt.datetime,
    extra: Sequence[Condition] = (),
) -> list[Condition]:
    """Ready, Reconciling, Stalled for `health`, then any `extra` conditions."""
    by_type = {c.type: c for c in previous}
    result = [
        condition(
            by_type.get(kind),
            kind=kind,
            status=status,
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )
        for kind, (status, reason, message) in _desired(health).items()
    ]
    return result + list(extra)


def find(conditions: Sequence[Condition], kind: str) -> Condition | None:
    return next((c for c in conditions if c.type == kind), None)


def same_ignoring_time(a: Sequence[Condition], b: Sequence[Condition]) -> bool:
    """Equal apart from lastTransitionTime: a status write would change nothing real."""

    def strip(items: Sequence[Condition]) -> list[dict[str, Any]]:
        return [c.model_dump(exclude={"last_transition_time"}) for c in items]

    return strip(a) == strip(b)
