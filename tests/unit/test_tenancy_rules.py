"""Redis tenancy's pure parts: names, ACL rules, URLs, settings and the pool's Deployment."""

from __future__ import annotations

import importlib
import os

import pytest

from beatkeeper.api.validation import parse_worker_pool
from beatkeeper.operator.credentials import secret_name
from beatkeeper.operator.deployments import (
    CREDENTIAL_ANNOTATION,
    PoolRef,
    TenantSecret,
    build_worker_deployment,
)
from beatkeeper.operator.settings import OperatorSettings
from beatkeeper_beat.settings import BeatSettings
from beatkeeper_core import keys, tenancy
from beatkeeper_core.keys import ROOT, key_space
from beatkeeper_devenv.helm import ensure_helm
from beatkeeper_devenv.settings import DevSettings
from beatkeeper_worker.app import transport_options
from beatkeeper_worker.settings import WorkerSettings


def test_every_key_of_a_namespace_is_under_its_prefix() -> None:
    space = key_space("team-a")
    names = [
        space.run_key("team-a/x@2030-01-01T00:00:00Z"),
        space.leases_key("beatkeeper.team-a.p"),
        space.active_key("team-a/x"),
        space.retries_key("q"),
        space.sweeper_key("q"),
        space.stats_key("q"),
        space.deleted_key("team-a/x"),
        space.unclaimed_key("q"),
        space.registered_key("q"),
        space.queue_key("q"),
        space.records_stream(),
    ]
    assert all(name.startswith("bk:team-a:") for name in names)
    assert space.run_key("r") == "bk:team-a:" + ROOT.run_key("r")
    assert key_space("") is ROOT


def test_acl_rules_confine_keys_channels_and_commands() -> None:
    rules = tenancy.acl_rules("team-a", ["ab" * 32], db=3)
    assert rules[:3] == ["reset", "on", "#" + "ab" * 32]
    assert "~bk:team-a:*" in rules
    assert "&bk:team-a:*" in rules
    assert "&bk:team-a:/3.celery.pidbox" in rules  # kombu's PSUBSCRIBE, matched literally
    for denied in ("-@admin", "-@dangerous", "-keys", "-scan", "-pubsub"):
        assert denied in rules
    assert not any(rule.startswith("~") and rule != "~bk:team-a:*" for rule in rules)
    assert tenancy.acl_rules("team-a", [])[1] == "off"  # no password left: no login


@pytest.mark.parametrize("name", ["Team", "a_b", "", "a" * 64, "x:y", "*"])
def test_a_namespace_that_is_not_a_dns_label_has_no_key_space(name: str) -> None:
    with pytest.raises(ValueError, match="is not a namespace name"):
        keys.tenant_prefix(name)


def test_credential_url_keeps_the_address_and_adds_the_user() -> None:
    url = tenancy.credential_url("rediss://:admin@redis.infra:6380/2", "team-a", "p/w+")
    assert url == "rediss://beatkeeper-team-a:p%2Fw%2B@redis.infra:6380/2"
    assert tenancy.database(url) == 2
    assert tenancy.database("redis://h") == 0


def test_tenancy_settings() -> None:
    off = OperatorSettings.from_env({})
    assert not off.tenancy.enabled
    on = OperatorSettings.from_env(
        {
            "BEATKEEPER_TENANCY": "true",
            "BEATKEEPER_TENANCY_BROKER_URL": "redis://10.0.0.1:6379/0",
            "BEATKEEPER_TENANCY_ROTATION_GRACE_SECONDS": "60",
        }
    )
    assert on.tenancy.enabled
    assert on.tenancy.broker_url == "redis://10.0.0.1:6379/0"
    assert on.tenancy.rotation_grace_seconds == 60
    assert BeatSettings.from_env({"BEATKEEPER_TENANCY": "1"}).tenancy
    with pytest.raises(ValueError, match="BEATKEEPER_TENANCY='maybe'"):
        OperatorSettings.from_env({"BEATKEEPER_TENANCY": "maybe"})
    worker = WorkerSettings.from_env({"BEATKEEPER_TENANT": "team-a"})
    assert transport_options(worker)["global_keyprefix"] == "bk:team-a:"
    assert "global_keyprefix" not in transport_options(WorkerSettings())


def test_operator_tls_settings_reach_its_redis_client() -> None:
    settings = OperatorSettings.from_env(
        {
            "BEATKEEPER_REDIS_URL": "rediss://redis:6380/0",
            "BEATKEEPER_BROKER_TLS_VERIFY": "optional",
            "BEATKEEPER_BROKER_TLS_CA_FILE": "/tls/ca.crt",
        }
    )
    assert settings.tls.redis_options(settings.redis_url) == {
        "ssl_cert_reqs": "optional",
        "ssl_ca_certs": "/tls/ca.crt",
    }
    assert settings.tls.redis_options("redis://redis:6379/0") == {}


def test_a_tenant_pools_pods_use_its_own_secret_and_key_space() -> None:
    spec = parse_worker_pool({"image": "worker:1", "brokerSecretRef": {"name": "shared"}})
    pool = PoolRef("team-a", "p", "uid-1")
    plain = build_worker_deployment(pool, spec, 1)
    tenant = build_worker_deployment(pool, spec, 1, TenantSecret(secret_name("p"), 2, "team-a"))
    env = {e["name"]: e for e in tenant["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BEATKEEPER_TENANT"]["value"] == "team-a"
    assert env["BEATKEEPER_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "p-workers-redis",
        "key": "url",
    }
    assert tenant["spec"]["template"]["metadata"]["annotations"][CREDENTIAL_ANNOTATION] == "2"
    plain_env = {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "BEATKEEPER_TENANT" not in plain_env
    assert CREDENTIAL_ANNOTATION not in plain["spec"]["template"]["metadata"]["annotations"]
    # A rotation (a new generation) is a new pod template, so the pods restart.
    rotated = build_worker_deployment(pool, spec, 1, TenantSecret(secret_name("p"), 3, "team-a"))
    assert rotated["metadata"]["annotations"] != tenant["metadata"]["annotations"]


def test_the_chart_turns_tenancy_on_for_the_operator_and_beat() -> None:
    chart = importlib.import_module("test_chart")
    helm = ensure_helm(DevSettings.from_env(os.environ))
    docs = chart.render(helm, *chart.value_set("tenancy"))
    for name in ("bk-beatkeeper-operator", "bk-beatkeeper-beat"):
        container = chart.find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][
            0
        ]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["BEATKEEPER_TENANCY"] == "true", name
    operator = chart.find(docs, "Deployment", "bk-beatkeeper-operator")
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BEATKEEPER_TENANCY_BROKER_URL"] == "redis://bk-redis.beatkeeper-system.svc:6379/0"
    assert env["BEATKEEPER_TENANCY_ROTATION_GRACE_SECONDS"] == "120"
    plain = chart.render(helm)
    for doc in plain:
        if doc["kind"] == "Deployment":
            names = {
                e["name"] for e in doc["spec"]["template"]["spec"]["containers"][0].get("env", [])
            }
            assert "BEATKEEPER_TENANCY" not in names
    refused = chart.run_helm(
        helm, "template", "bk", str(chart.CHART), "--set", "tenancy.brokerUrl=redis://u:p@h:1/0"
    )
    assert refused.returncode != 0
    assert "tenancy.brokerUrl: Does not match pattern" in refused.stderr
