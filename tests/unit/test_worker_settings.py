"""WorkerSettings from the environment, and the Celery configuration built from them."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from beatkeeper_core.broker import broker_ssl
from beatkeeper_core.contract import allowed_task_globs
from beatkeeper_worker.app import celery_config
from beatkeeper_worker.main import worker_argv
from beatkeeper_worker.settings import WorkerSettings


def test_defaults_are_production_values() -> None:
    worker = WorkerSettings.from_env({})
    assert worker.broker_url == "redis://127.0.0.1:6379/0"
    assert worker.pool == "prefork"
    assert (worker.concurrency, worker.prefetch) == (2, 1)
    assert worker.allowed_tasks == ()  # deny by default: the modules' tasks and the built-ins
    assert allowed_task_globs(worker.allowed_tasks, ("app.jobs",)) == (
        "app.jobs.*",
        "beatkeeper.http",
        "beatkeeper.sleep",
    )
    assert worker.tenant == ""
    assert worker.allowed_hosts == ()
    assert (worker.lease_seconds, worker.renew_seconds, worker.sweep_seconds) == (15, 5, 1)
    assert worker.visibility_timeout_seconds == 30
    assert worker.restore_interval_seconds == 5
    assert worker.liveness_file == Path("/tmp/beatkeeper-worker.alive")
    # Only the worker's own variables count: the operator's and the dev environment's are
    # not read (a bad value of theirs does not stop a worker).
    others = {"HOME": "/h", "BEATKEEPER_WEBHOOK": "bogus", "BEATKEEPER_CACHE_DIR": "/c"}
    assert WorkerSettings.from_env(others) == worker


def test_environment_overrides() -> None:
    worker = WorkerSettings.from_env(
        {
            "BEATKEEPER_BROKER_URL": "rediss://:pw@redis:6380/1",
            "BEATKEEPER_BROKER_TLS_CA_FILE": "/etc/ca.pem",
            "BEATKEEPER_BROKER_TLS_VERIFY": "optional",
            "BEATKEEPER_WORKER_QUEUE": "beatkeeper.team.reports",
            "BEATKEEPER_WORKER_POOL": "threads",
            "BEATKEEPER_WORKER_CONCURRENCY": "8",
            "BEATKEEPER_WORKER_PREFETCH": "4",
            "BEATKEEPER_TASK_MODULES": "app.tasks, app.more ",
            "BEATKEEPER_ALLOWED_TASKS": "app.*,beatkeeper.http",
            "BEATKEEPER_ALLOWED_HOSTS": "metadata.google.internal",
            "BEATKEEPER_BROKER_VISIBILITY_TIMEOUT": "3",
            "BEATKEEPER_BROKER_RESTORE_INTERVAL": "0.5",
            "BEATKEEPER_LEASE_SECONDS": "2",
            "BEATKEEPER_LEASE_RENEW_SECONDS": "0.5",
            "BEATKEEPER_WORKER_LOGLEVEL": "debug",
        }
    )
    assert worker.tls_ca_file == Path("/etc/ca.pem")
    assert worker.tls_verify == "optional"
    assert worker.pool == "threads"
    assert (worker.concurrency, worker.prefetch) == (8, 4)
    assert worker.task_modules == ("app.tasks", "app.more")
    assert worker.allowed_tasks == ("app.*", "beatkeeper.http")
    assert worker.restore_interval_seconds == 0.5
    assert worker.log_level == "DEBUG"


def test_the_operators_redis_url_is_not_the_workers() -> None:
    env = {"BEATKEEPER_REDIS_URL": "redis://shared:6379/0"}
    assert WorkerSettings.from_env(env).broker_url == "redis://127.0.0.1:6379/0"
    env["BEATKEEPER_BROKER_URL"] = "redis://broker:6379/0"
    assert WorkerSettings.from_env(env).broker_url == "redis://broker:6379/0"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BEATKEEPER_WORKER_POOL": "gevent"}, "use prefork or threads"),
        ({"BEATKEEPER_BROKER_TLS_VERIFY": "maybe"}, "use required, optional or none"),
        ({"BEATKEEPER_WORKER_CONCURRENCY": "0"}, "must be positive"),
        ({"BEATKEEPER_LEASE_SECONDS": "many"}, "is not a number"),
        ({"BEATKEEPER_LEASE_SECONDS": "4", "BEATKEEPER_LEASE_RENEW_SECONDS": "3"}, "at most half"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerSettings.from_env(env)


def test_celery_config_is_json_only_acks_late_and_sends_events() -> None:
    config = celery_config(WorkerSettings(queue="q", prefetch=3))
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["accept_content"] == ["json"]
    assert "pickle" not in repr(config)
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 3
    assert config["worker_send_task_events"] is True
    assert config["task_send_sent_event"] is False  # it would name the entry task
    assert config["result_backend"] is None
    assert config["broker_use_ssl"] is None
    assert config["broker_transport_options"] == {
        "visibility_timeout": 30,
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 15,
    }


def test_restore_interval_sets_kombus_cadence_exactly() -> None:
    config = celery_config(WorkerSettings(restore_interval_seconds=0.5))
    options = config["broker_transport_options"]
    assert options["unacked_restore_interval"] == 0.5
    assert options["unacked_restore_throttle"] == 1


def test_rediss_gets_tls_options_for_celery_and_redis_py() -> None:
    settings = WorkerSettings(
        broker_url="rediss://redis:6380/0",
        tls_ca_file=Path("/ca.pem"),
        tls_cert_file=Path("/tls.crt"),
        tls_key_file=Path("/tls.key"),
    )
    assert broker_ssl(settings.broker_url, settings.tls) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/tls.crt",
        "ssl_keyfile": "/tls.key",
    }
    options = settings.tls.redis_options(settings.broker_url)
    assert options["ssl_cert_reqs"] == "required"
    assert options["ssl_ca_certs"] == "/ca.pem"
    assert WorkerSettings().tls.redis_options(WorkerSettings().broker_url) == {}


def test_worker_argv_names_queue_pool_and_concurrency_then_passes_extras() -> None:
    settings = WorkerSettings(queue="beatkeeper.ns.pool", pool="threads", concurrency=4)
    argv = worker_argv(settings, ["-n", "x@%h"])
    assert argv[0] == "worker"
    assert "--queues=beatkeeper.ns.pool" in argv
    assert "--pool=threads" in argv
    assert "--concurrency=4" in argv
    assert argv[-2:] == ["-n", "x@%h"]
