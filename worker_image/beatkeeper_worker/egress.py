"""Outbound HTTP for `beatkeeper.http`: which addresses may be called, and calling exactly those.

Link-local networks and cloud-metadata endpoints are refused unless the pool's
allowedHosts names the host (or an address or network containing it): a
ScheduledTask author must not be able to read the node's cloud credentials.
The host is resolved once, every address is checked, and the connection goes
to a checked address while the Host header and the TLS server name stay the
URL's, so a DNS answer cannot change between check and connect (rebinding).
Redirects are not followed (a redirect could lead anywhere); a 3xx is just a
status.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from beatkeeper_core.records import redact
from beatkeeper_worker.errors import HostRefused, InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[object, object, object, object, tuple[object, ...]]]]

LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES = frozenset({"metadata.google.internal"})
RESPONSE_LIMIT = 1 << 20  # read (and drop) at most this much of a body


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]  # checked, in resolver order
    authorization: str | None = None  # from user-info in the URL


def normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


# IPv6 forms that carry an IPv4 address a packet may end up at: NAT64's well-known
# and local-use prefixes (RFC 6052, RFC 8215) and the deprecated IPv4-compatible form.
# (IPv4-mapped and 6to4 are read by the ipaddress module itself.)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def normalize_address(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for, if it embeds one; else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    low32 = int(address) & 0xFFFFFFFF
    if any(address in net for net in NAT64):
        return ipaddress.IPv4Address(low32)
    if address in IPV4_COMPATIBLE and int(address) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(low32)
    return address


def refused_address(address: IPAddress) -> bool:
    candidates = {address, normalize_address(address)}
    return any(
        each in METADATA_ADDRESSES or any(each in net for net in LINK_LOCAL) for each in candidates
    )


def allowed_explicitly(host: str, address: IPAddress | None, allowed_hosts: Iterable[str]) -> bool:
    """True when an allowedHosts entry names the host, the address, or a network holding it."""
    for raw in allowed_hosts:
        entry = normalize_host(raw)
        if entry == host:
            return True
        if address is None:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if address in network or normalize_address(address) in network:
            return True
    return False


def resolve_target(
    url: str, allowed_hosts: Iterable[str], resolver: Resolver = socket.getaddrinfo
) -> Target:
    """Parse, resolve and check `url`; raise HostRefused or InvalidRequest."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"only absolute http and https URLs can be called: {redact(url)!r}")
    host = normalize_host(parts.hostname)
    allowed = tuple(allowed_hosts)
    if host in METADATA_NAMES and not allowed_explicitly(host, None, allowed):
        raise HostRefused(_refusal(host, host))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses: list[str] = []
    for *_, sockaddr in resolver(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if refused_address(address) and not allowed_explicitly(host, address, allowed):
            raise HostRefused(_refusal(host, str(address)))
        if str(sockaddr[0]) not in addresses:
            addresses.append(str(sockaddr[0]))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, tuple(addresses), _basic_auth(parts))


def _refusal(host: str, address: str) -> str:
    return (
        f"{host} is (or resolves to) {address}, a link-local or cloud-metadata address; "
        "name it in the pool's allowedHosts to allow it"
    )


def _basic_auth(parts: object) -> str | None:
    username = getattr(parts, "username", None)
    if username is None:
        return None
    password = getattr(parts, "password", None) or ""
    token = base64.b64encode(f"{unquote(username)}:{unquote(password)}".encode()).decode()
    return f"Basic {token}"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a fixed address, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address; the certificate is checked against the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def request(
    target: Target,
    method: str,
    headers: Mapping[str, str],
    body: bytes | None,
    timeout: float,
) -> int:
    """Send one request to the first checked address that accepts a connection."""
    last_error: OSError | None = None
    for address in target.addresses:
        connection = _connection(target, address, timeout)
        try:
            try:
                connection.connect()
            except OSError as exc:
                last_error = exc
                continue
            return _exchange(connection, target, method, headers, body)
        finally:
            connection.close()
    raise last_error or OSError(f"{target.host} has no address")


def _connection(target: Target, address: str, timeout: float) -> http.client.HTTPConnection:
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    return kind(target.host, target.port, address, timeout)


def _exchange(
    connection: http.client.HTTPConnection,
    target: Target,
    method: str,
    headers: Mapping[str, str],
    body: bytes | None,
) -> int:
    sent = dict(headers)
    if target.authorization and not any(k.lower() == "authorization" for k in sent):
        sent["Authorization"] = target.authorization
    connection.request(method, target.path, body=body, headers=sent)
    response = connection.getresponse()
    response.read(RESPONSE_LIMIT)
    return response.status
