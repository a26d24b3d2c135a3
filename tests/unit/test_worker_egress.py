"""Which addresses `beatkeeper.http` refuses, and that it connects only to checked ones."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from beatkeeper_worker.builtins import _encode_body, _ranges
from beatkeeper_worker.egress import resolve_target
from beatkeeper_worker.errors import HostRefused, InvalidRequest


def resolver(*addresses: str) -> Any:
    calls: list[str] = []

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        family = socket.AF_INET6
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure, ... metadata
        "169.254.10.1",  # any IPv4 link-local
        "fd00:ec2::254",  # AWS metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "fe80::1",  # IPv6 link-local
        "::ffff:169.254.169.254",  # IPv4-mapped form of the same
        "::ffff:a9fe:a9fe",  # the same, written in hex
        "64:ff9b::169.254.169.254",  # NAT64, well-known prefix (RFC 6052)
        "64:ff9b::a9fe:a9fe",  # the same, in hex
        "64:ff9b:1::a9fe:a9fe",  # NAT64, local-use prefix (RFC 8215)
        "::169.254.169.254",  # IPv4-compatible (deprecated, still parsed)
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "::ffff:100.100.100.200",  # Alibaba's metadata, mapped
        "64:ff9b::6464:64c8",  # the same through NAT64
        "::ffff:169.254.1.2",  # any mapped IPv4 link-local
    ],
)
def test_refused_addresses(address: str) -> None:
    with pytest.raises(HostRefused, match="allowedHosts"):
        resolve_target("http://innocent.example/x", (), resolver(address))


def test_every_resolved_address_is_checked() -> None:
    with pytest.raises(HostRefused, match=r"169\.254\.169\.254"):
        resolve_target("http://two.example/", (), resolver("93.184.216.34", "169.254.169.254"))


def test_metadata_name_is_refused_before_resolving() -> None:
    resolve = resolver("10.0.0.1")
    with pytest.raises(HostRefused):
        resolve_target("http://Metadata.Google.Internal./computeMetadata/v1/", (), resolve)
    assert resolve.calls == []


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://metadata.google.internal/v1", "metadata.google.internal"),
        ("http://metadata.google.internal/v1", "METADATA.google.internal."),
        ("http://169.254.169.254/v1", "169.254.169.254"),
        ("http://169.254.169.254/v1", "169.254.0.0/16"),
        ("http://meta.example/v1", "meta.example"),  # a name resolving to it
    ],
)
def test_allowed_hosts_override_by_name_address_or_network(url: str, allowed: str) -> None:
    target = resolve_target(url, (allowed,), resolver("169.254.169.254"))
    assert target.addresses == ("169.254.169.254",)


def test_a_metadata_name_must_be_named_itself() -> None:
    with pytest.raises(HostRefused):
        resolve_target(
            "http://metadata.google.internal/", ("169.254.169.254",), resolver("169.254.169.254")
        )


def test_allowing_one_address_does_not_allow_another() -> None:
    with pytest.raises(HostRefused):
        resolve_target("http://h.example/", ("169.254.0.1",), resolver("169.254.0.2"))


def test_target_keeps_host_path_query_and_checked_addresses() -> None:
    target = resolve_target(
        "https://user:p%40ss@api.example:8443/a/b?c=1", (), resolver("10.1.1.1", "10.1.1.1")
    )
    assert (target.scheme, target.host, target.port) == ("https", "api.example", 8443)
    assert target.path == "/a/b?c=1"
    assert target.addresses == ("10.1.1.1",)
    assert target.authorization == "Basic dXNlcjpwQHNz"  # user:p@ss


@pytest.mark.parametrize("url", ["ftp://h.example/", "file:///etc/passwd", "/relative", "http://"])
def test_only_absolute_http_urls(url: str) -> None:
    with pytest.raises(InvalidRequest):
        resolve_target(url, (), resolver("10.0.0.1"))


def test_status_ranges_read_naturally() -> None:
    assert _ranges(set(range(200, 300))) == "200-299"
    assert _ranges({200, 201, 204, 301}) == "200-201, 204, 301"


def test_json_bodies_get_a_content_type_unless_given() -> None:
    headers: dict[str, str] = {}
    assert _encode_body({"a": 1}, headers) == b'{"a": 1}'
    assert headers == {"Content-Type": "application/json"}
    kept = {"content-type": "application/vnd.x+json"}
    _encode_body([1], kept)
    assert kept == {"content-type": "application/vnd.x+json"}
    assert _encode_body("raw", {}) == b"raw"
    assert _encode_body(None, {}) is None


@pytest.mark.parametrize(
    "address", ["64:ff9b::5db8:d822", "::ffff:93.184.216.34", "2002:5db8:d822::1", "::1"]
)
def test_embedded_ordinary_addresses_are_not_refused(address: str) -> None:
    target = resolve_target("http://ok.example/", (), resolver(address))
    assert target.addresses == (address,)


def test_an_allowed_ipv4_network_covers_its_ipv6_forms() -> None:
    for address in ("::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1"):
        target = resolve_target("http://meta.example/", ("169.254.0.0/16",), resolver(address))
        assert target.addresses == (address,)
