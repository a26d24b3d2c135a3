"""Redis tenancy: which keys, channels and commands one namespace's workers may use.

With tenancy on, the workers of namespace `N` connect as the Redis user
`beatkeeper-N`, and every key and pub/sub channel they use starts with
`bk:N:` (Beatkeeper's keys through `KeySpace`, kombu's through its
`global_keyprefix`). The user's ACL allows only those keys and channels and
the commands a worker needs, so task code holding that credential gets NOPERM
for every key of another namespace and for the operator's and beat's keys
(`redbeat:*`, `beatkeeper:*`). Namespaces are DNS labels (`[a-z0-9-]`), so no
namespace's pattern matches another's keys.

The operator provisions the users with the administrative credential (which
only it and beat hold), and writes each pool's credential into a Secret of its
namespace (`beatkeeper.operator.credentials`). This module only names things; it does no I/O.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from beatkeeper_core import keys

USER_PREFIX = "beatkeeper-"
URL_KEY = "url"  # the key of a pool's credential Secret that holds its Redis URL

# What a worker sends: data commands on its own keys, scripts (the run registry),
# transactions (kombu's restore), pub/sub (events, remote control) and connection
# set-up. Never: administration, KEYS/SCAN/RANDOMKEY (they would list other
# namespaces' key names), PUBSUB (lists channels), or anything @dangerous.
COMMAND_RULES = (
    "-@all",
    "+@read",
    "+@write",
    "+@keyspace",
    "+@list",
    "+@hash",
    "+@set",
    "+@sortedset",
    "+@string",
    "+@stream",
    "+@scripting",
    "+@transaction",
    "+@pubsub",
    "+@connection",
    "+time",
    "-@admin",
    "-@dangerous",
    "-keys",
    "-scan",
    "-randomkey",
    "-pubsub",
    "-migrate",
    "-move",
    "-copy",
    "-function",
    "-script|flush",
    "-script|kill",
)


def user_name(namespace: str) -> str:
    return f"{USER_PREFIX}{keys.check_namespace(namespace)}"


def acl_rules(namespace: str, password_hashes: list[str], db: int = 0) -> list[str]:
    """`ACL SETUSER <user_name(namespace)>` arguments: the whole user, from scratch.

    `password_hashes` are SHA-256 hex digests (`#<hash>`): the operator keeps
    hashes, never passwords, and a rotation keeps the old one for a grace period.
    Redis checks a PSUBSCRIBE pattern literally against the user's channel
    patterns, so the one pattern a worker subscribes (kombu's fanout channel of
    Celery's remote control, in database `db`) is listed as itself.
    """
    prefix = keys.tenant_prefix(namespace)
    passwords = [f"#{digest}" for digest in password_hashes]
    return [
        "reset",
        "on" if passwords else "off",
        *passwords,
        f"~{prefix}*",
        f"&{prefix}*",
        f"&{prefix}/{db}.celery.pidbox",
        *COMMAND_RULES,
    ]


def database(url: str) -> int:
    """The database number of a redis:// URL (0 when it names none)."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def credential_url(base_url: str, namespace: str, password: str) -> str:
    """`base_url` (the workers' Redis address) with the namespace's user and password."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user_name(namespace), safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
