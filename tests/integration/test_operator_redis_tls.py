"""The operator's Redis clients against a real Redis that speaks only TLS (rediss://),
with the TLS settings the chart passes (BEATKEEPER_BROKER_TLS_*)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from beatkeeper.operator.runtime import RunControl, redis_client
from beatkeeper.operator.settings import OperatorSettings
from beatkeeper.pki import CertificateAuthority
from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.processes import Supervisor, wait_until
from beatkeeper_devenv.settings import DevSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_redis(dev_settings: DevSettings, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(rediss:// URL, CA file) of a redis-server with no plain-text port."""
    authority = CertificateAuthority.create(tmp_path / "ca")
    server = authority.issue_serving(tmp_path / "server", "redis", ["127.0.0.1"])
    port = free_port()
    supervisor = Supervisor(tmp_path / "logs")
    command = [
        dev_settings.redis_server,
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(server.cert_path),
        "--tls-key-file", str(server.key_path),
        "--tls-ca-cert-file", str(authority.pair.cert_path),
        "--tls-auth-clients", "no",
        "--bind", "127.0.0.1",
        "--save", "",
        "--dir", str(tmp_path),
    ]  # fmt: skip
    try:
        component = supervisor.start("tls-redis", command)
        wait_until(
            component,
            lambda: "Ready to accept connections" in component.log_path.read_text(),
            timeout=30,
        )
        yield f"rediss://127.0.0.1:{port}/0", authority.pair.cert_path
    finally:
        supervisor.stop_all()


def test_the_operator_reaches_a_tls_redis_with_the_charts_settings(
    tls_redis: tuple[str, Path],
) -> None:
    url, ca = tls_redis
    settings = OperatorSettings.from_env(
        {"BEATKEEPER_REDIS_URL": url, "BEATKEEPER_BROKER_TLS_CA_FILE": str(ca)}
    )
    client = redis_client(settings)
    control = RunControl(settings, client)
    try:
        assert client.ping()
        # Run-now, cancel and deletion marks go through the run registry's own client.
        assert control.registry("team-a").client.ping()
    finally:
        client.close()
        control.app.close()
    # Without the CA the server's certificate is refused: verification is on.
    unverified = redis_client(OperatorSettings.from_env({"BEATKEEPER_REDIS_URL": url}))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        unverified.ping()
    unverified.close()
