"""Spec parsing and admission review: every error names its field and reason."""

from __future__ import annotations

from typing import Any

import pytest

from beatkeeper.api.validation import InvalidSpec, parse_scheduled_task, parse_worker_pool
from beatkeeper.operator.admission import review_scheduled_task, review_worker_pool

BASE: dict[str, Any] = {"every": "30s", "workerPool": "p", "task": {"name": "beatkeeper.sleep"}}
POOLS = {("ns", "p"): {"image": "w:1", "allowedTasks": ["beatkeeper.*"]}}


def spec(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            spec(every=None, schedule="*/61 * * * *"),
            'spec.schedule: "*/61 * * * *": minute 61 is out of range 0-59',
        ),
        (spec(every="0s"), 'spec.every: "0s": must be at least 1s'),
        (spec(timeZone="Mars/Olympus"), 'spec.timeZone: "Mars/Olympus": unknown IANA time zone'),
        (
            spec(schedule="* * * * *"),
            "spec: spec.schedule, spec.every and spec.at are mutually exclusive: set exactly one",
        ),
        (spec(retry={"maxRetries": "3"}), "spec.retry.maxRetries: Input should be a valid integer"),
        (
            spec(retry={"backoff": {"initialSeconds": 9, "maxSeconds": 3}}),
            "spec.retry.backoff: maxSeconds must not be less than initialSeconds",
        ),
        (
            spec(timeouts={"softSeconds": 5, "hardSeconds": 5}),
            "spec.timeouts: softSeconds must be less than hardSeconds",
        ),
        (
            spec(at="2030-01-01T00:00:00", every=None),
            "spec.at: must be an RFC 3339 time with a zone offset, such as 2026-12-01T09:00:00Z",
        ),
        (spec(historyLimit=51), "spec.historyLimit: must be at most 50"),
        (spec(colour="blue"), "spec.colour: is not a known field"),
        ({"every": "30s", "task": {"name": "a.b"}}, "spec.workerPool: is required"),
    ],
)
def test_scheduled_task_errors(raw: dict[str, Any], message: str) -> None:
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(InvalidSpec) as caught:
        parse_scheduled_task(raw)
    assert message in str(caught.value)


def test_all_errors_are_reported_together() -> None:
    raw = {
        "schedule": "*/0 * * * *",
        "timeZone": "Nowhere/Town",
        "workerPool": "p",
        "task": {"name": "a.b"},
        "historyLimit": -1,
    }
    with pytest.raises(InvalidSpec) as caught:
        parse_scheduled_task(raw)
    paths = [error.path for error in caught.value.errors]
    assert paths == ["spec.timeZone", "spec.schedule", "spec.historyLimit"]


def test_valid_spec_gets_the_documented_defaults() -> None:
    parsed = parse_scheduled_task(BASE)
    assert parsed.retry.max_retries == 3
    assert parsed.retry.backoff.factor == 2.0
    assert parsed.catch_up.max_runs == 1
    assert parsed.history_limit == 5
    assert parsed.concurrency_policy == "Allow"
    assert parsed.time_zone == "UTC"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"image": "w", "allowedHosts": ["bad host"]},
            'spec.allowedHosts[0]: "bad host" is not a host name',
        ),
        (
            {"image": "w", "allowedTasks": ["a.[b"]},
            'spec.allowedTasks[0]: "a.[b" has an unbalanced',
        ),
        (
            {"image": "w", "autoscaling": {"minReplicas": 3, "maxReplicas": 1}},
            "spec.autoscaling: minReplicas must not be greater than maxReplicas",
        ),
        ({}, "spec.image: is required"),
    ],
)
def test_worker_pool_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_worker_pool(raw)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "10.0.0.0/8", "metadata.google.internal", "::1"]
)
def test_allowed_hosts_accept_names_addresses_networks(host: str) -> None:
    assert parse_worker_pool({"image": "w", "allowedHosts": [host]}).allowed_hosts == [host]


def test_review_refuses_task_outside_the_pool() -> None:
    message = review_scheduled_task("CREATE", "ns", spec(task={"name": "evil.run"}), None, POOLS)
    assert message == (
        'spec.task.name: "evil.run" is not allowed by WorkerPool "p" (allowedTasks: beatkeeper.*)'
    )


def test_review_admits_task_when_pool_unknown() -> None:
    assert (
        review_scheduled_task("CREATE", "other", spec(task={"name": "evil.run"}), None, POOLS)
        is None
    )


def test_review_admits_metadata_only_update_of_a_bad_spec() -> None:
    bad = spec(every="0s")
    assert review_scheduled_task("UPDATE", "ns", bad, dict(bad), POOLS) is None
    assert review_scheduled_task("UPDATE", "ns", bad, BASE, POOLS) is not None
    assert review_worker_pool("UPDATE", {"image": ""}, {"image": ""}) is None


def test_review_reports_schema_and_pool_errors_together() -> None:
    message = review_scheduled_task(
        "CREATE", "ns", spec(every="5x", task={"name": "evil.run"}), None, POOLS
    )
    assert message is not None
    assert message.startswith('spec.every: "5x": not a duration')
    assert 'spec.task.name: "evil.run" is not allowed' in message
