"""Least privilege, measured: the chart grants the operator what it uses, and nothing more.

This module runs after every other test of the session (tests/e2e/conftest.py orders it
last) and reads the local apiserver's audit log (`beatkeeper_devenv.cluster.AUDIT_POLICY`:
level Metadata, only ServiceAccounts and `AUDITED_GROUP`) for the requests of the
session's operators:

- the host operator, by its own client-certificate user (conftest's `HOST_OPERATOR_USER`),
  bound to nothing but the operator rules `helm template` renders and the webhook
  configurations of local mode (`LOCAL_WEBHOOK_RULES`), so the whole tier has also run on
  the chart's grants;
- the chart's operator pods (test_helm.py, test_chart_on_node.py, when they ran), by their
  ServiceAccount, `system:serviceaccount:NAMESPACE:FULLNAME-operator`.

Each request becomes the grant it needs, (apiGroup, resource[/subresource], verb): the
audit `verb` is already RBAC's (a list with `?watch=true` is `watch`, server-side apply is
`patch`), the core group is "", subresources such as `status` join their resource, and
non-resource URLs (discovery, /version) are left out (every user has them through
`system:discovery`). Then the test fails when

- the chart (both modes, as rendered with default values and with `watchNamespaces`)
  grants something no operator used, unless `NOT_EXERCISED_HERE` says why with a reason of
  its own (judged only when the whole tier ran: a partial session uses less); an entry there
  that the tier does use after all is stale and fails too;
- an operator used something the chart does not grant (`LOCAL_WEBHOOK_RULES` aside, for
  the host operator only), or the apiserver refused an operator's request for want of a
  grant (`authorization.k8s.io/decision: forbid`).

The report (who used what, how often) is printed and written to the session's log
directory as rbac-least-privilege.txt.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from beatkeeper_devenv.environment import Environment

Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)
HERE = Path(__file__).resolve().parent
# The chart names its operator's ServiceAccount FULLNAME-operator.
CHART_OPERATOR = re.compile(r"system:serviceaccount:(?P<namespace>[^:]+):(?P<account>\S+-operator)")


@dataclass(frozen=True)
class Allowance:
    reason: str


# What the chart grants that this session cannot exercise, each with its reason.
NOT_EXERCISED_HERE: dict[Grant, Allowance] = {
    ("beatkeeper.dev", "workerpools/finalizers", "update"): Allowance(
        "the worker Deployment's ownerReference sets blockOwnerDeletion, which the "
        "OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters) "
        "allows only to who may update the owner's finalizers; that is a check inside the "
        "Deployment's create, never a request of its own, so no audit log shows it"
    ),
}


def grants(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    """Every (apiGroup, resource, verb) the rules allow; they must name each one."""
    out: set[Grant] = set()
    for rule in rules:
        assert not rule.get("resourceNames"), rule
        assert not rule.get("nonResourceURLs"), rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"a wildcard cannot be measured: {rule}"
        out |= {
            (group, resource, verb)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
    return out


def audit_events(log: Path) -> Iterator[dict[str, Any]]:
    """The events of the log and of its rotated files, once each (a watch logs two stages)."""
    seen: set[str] = set()
    for path in sorted(log.parent.glob("audit*.log")):
        with path.open() as lines:
            for line in lines:
                event = json.loads(line)
                if event["auditID"] not in seen:
                    seen.add(event["auditID"])
                    yield event


HOST = "host operator"


def operator_of(event: dict[str, Any], host_user: str) -> str | None:
    """Which of the session's operators made the request, if one did."""
    user = event["user"]["username"]
    if user == host_user:
        return HOST
    chart = CHART_OPERATOR.fullmatch(user)
    if chart:
        return f"chart operator {chart['namespace']}/{chart['account']}"
    return None


def requested(event: dict[str, Any]) -> Grant | None:
    """The grant the request needed; None for a non-resource URL."""
    ref = event.get("objectRef") or {}
    if "resource" not in ref:
        return None
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return (ref.get("apiGroup", ""), resource, event["verb"])


@dataclass
class Usage:
    """What the session's operators did, by grant."""

    used: dict[Grant, Counter[str]]
    forbidden: list[str]
    agents: dict[str, set[str]]

    @classmethod
    def read(cls, log: Path, host_user: str) -> Usage:
        used: dict[Grant, Counter[str]] = defaultdict(Counter)
        forbidden: list[str] = []
        agents: dict[str, set[str]] = defaultdict(set)
        for event in audit_events(log):
            who = operator_of(event, host_user)
            grant = requested(event) if who else None
            if who is None or grant is None:
                continue
            used[grant][who] += 1
            agents[who].add(str(event.get("userAgent", "")).split(" ")[0])
            if event.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid":
                forbidden.append(f"{who}: {event['verb']} {event['requestURI']}")
        return cls(dict(used), forbidden, dict(agents))


def partial_session(session: pytest.Session, deselected: list[pytest.Item]) -> list[str]:
    """Why this session is not the whole e2e tier (its own_node tests aside), if it is not."""
    left_out = [
        item.nodeid
        for item in deselected
        if item.path.is_relative_to(HERE) and not item.get_closest_marker("own_node")
    ]
    collected = {item.path for item in [*session.items, *deselected]}
    missing = [path.name for path in sorted(HERE.glob("test_*.py")) if path not in collected]
    reasons = [f"not collected: {', '.join(missing)}"] if missing else []
    if left_out:
        reasons.append(f"{len(left_out)} e2e tests deselected, e.g. {left_out[0]}")
    return reasons


def _name(grant: Grant) -> str:
    group, resource, verb = grant
    return f"{verb} {resource}" + (f".{group}" if group else "")


def report(usage: Usage, granted: dict[Grant, set[str]]) -> str:
    lines = ["grant (verb resource.group)  chart modes granting it  requests by operator"]
    for grant in sorted(set(usage.used) | set(granted), key=lambda g: (g[0], g[1], g[2])):
        modes = ",".join(sorted(granted.get(grant, ()))) or "NOT GRANTED"
        counts = usage.used.get(grant, Counter())
        by = ", ".join(f"{who}: {n}" for who, n in sorted(counts.items())) or "UNUSED"
        lines.append(f"{_name(grant)}  [{modes}]  {by}")
    for grant, allowance in NOT_EXERCISED_HERE.items():
        state = "used" if grant in usage.used else "not used"
        lines.append(f"allowance ({state}): {_name(grant)}: {allowance.reason}")
    lines.append("user agents: " + json.dumps({k: sorted(v) for k, v in usage.agents.items()}))
    return "\n".join(lines)


def test_the_chart_grants_what_the_operators_use_and_no_more(
    request: pytest.FixtureRequest,
    cluster: Environment,
    operator: Any,
    host_operator_identity: Any,
    chart_operator_rules: dict[str, list[dict[str, Any]]],
    deselected: list[pytest.Item],
) -> None:
    identity = host_operator_identity
    if cluster.audit_log is None or identity is None:
        pytest.skip(
            "on a cluster given by BEATKEEPER_KUBECONFIG there is no audit log of ours and "
            "no host-operator user bound to the chart's rules; the local control plane has both"
        )
    granted: dict[Grant, set[str]] = defaultdict(set)
    for mode, rules in chart_operator_rules.items():
        for grant in grants(rules):
            granted[grant].add(mode)
    usage = Usage.read(cluster.audit_log, identity.user)
    text = report(usage, granted)
    (cluster.log_dir / "rbac-least-privilege.txt").write_text(text + "\n")
    print(text)

    assert any(HOST in by for by in usage.used.values()), (
        f"no request of {identity.user} in {cluster.audit_log}"
    )
    assert usage.forbidden == [], "the apiserver refused these operator requests"
    host_only = grants(identity.local_rules)
    not_granted = [
        f"{_name(grant)} by {', '.join(sorted(by))}"
        for grant, by in usage.used.items()
        if grant not in granted and not (grant in host_only and set(by) == {HOST})
    ]
    assert not_granted == [], "used, but the chart does not grant it"

    stale = [
        f"{_name(grant)}: {allowance.reason}"
        for grant, allowance in NOT_EXERCISED_HERE.items()
        if grant in usage.used
    ]
    assert stale == [], "exercised after all: drop these from NOT_EXERCISED_HERE"
    partial = partial_session(request.session, deselected)
    unused = sorted(set(granted) - set(usage.used) - set(NOT_EXERCISED_HERE))
    if partial:
        pytest.skip(
            f"unused grants not judged, this session is not the whole e2e tier "
            f"({'; '.join(partial)}); unused so far: {[_name(g) for g in unused]}"
        )
    assert [_name(grant) for grant in unused] == [], (
        "granted by the chart, used by no operator in the whole e2e tier: drop them, or say "
        "in NOT_EXERCISED_HERE why this tier cannot exercise them"
    )
