"""Redis tenancy, the operator's side: one Redis user per namespace, one Secret per pool.

With tenancy on (`BEATKEEPER_TENANCY`), the workers of namespace `N` log in as
the Redis user `beatkeeper-N`, confined by its ACL to the keys and channels
`bk:N:*` (`beatkeeper_core.tenancy`). The operator provisions that user with
its administrative credential:

- Each WorkerPool gets its own password of the namespace's user, written into
  the Secret `<pool>-workers-redis` (key `url`) in the pool's namespace, owned
  by the pool so it goes with it. The operator creates or replaces that Secret
  and never reads one.
- Redis keeps SHA-256 hashes only (`#<hash>` in the ACL), and the operator's
  record of them, per pool, lives in `beatkeeper:tenancy:<namespace>` (an
  admin-only key): the generation, the hash, the rotation tokens acted on and
  the hashes still valid while pods restart after a rotation.
- The annotation `beatkeeper.dev/rotate-redis-credential: <token>` on a pool
  rotates its password once per token: a new password and Secret, a new
  generation in the pod template (the pods restart with it), and the old
  password stays valid for `rotation_grace_seconds`.
- When a pool goes, its password goes; with the namespace's last pool, the
  user goes (`ACL DELUSER` also disconnects its clients).
- A Redis that restarted without its ACL (users are not persisted unless Redis
  has an ACL file) gets the users back from the record within a check period;
  a record lost too (no persistence) means new passwords and Secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from beatkeeper.operator.deployments import PoolRef, owner_reference, pool_labels
from beatkeeper.operator.kubeapi import KubeApi
from beatkeeper.operator.settings import Tenancy
from beatkeeper_core import keys, tenancy

logger = logging.getLogger(__name__)

ROTATE_ANNOTATION = "beatkeeper.dev/rotate-redis-credential"
CHECK_SECONDS = 10.0  # how often a namespace's user is checked (it may have vanished)
_TOKENS_KEPT = 20


def secret_name(pool: str) -> str:
    return f"{pool}-workers-redis"[:253]


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass
class PoolCredential:
    """The operator's record of one pool's password (its hash, never the password)."""

    generation: int = 0
    digest: str = ""
    tokens: list[str] = field(default_factory=list)  # rotation tokens acted on
    retiring: list[tuple[str, int]] = field(default_factory=list)  # (hash, valid until ms)

    @classmethod
    def parse(cls, raw: bytes | str) -> PoolCredential:
        data = json.loads(raw)
        return cls(
            generation=int(data.get("generation", 0)),
            digest=str(data.get("digest", "")),
            tokens=[str(t) for t in data.get("tokens", [])],
            retiring=[(str(h), int(until)) for h, until in data.get("retiring", [])],
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "generation": self.generation,
                "digest": self.digest,
                "tokens": self.tokens,
                "retiring": self.retiring,
            }
        )

    def valid_hashes(self, now_ms: int) -> list[str]:
        return [self.digest, *(h for h, until in self.retiring if until > now_ms)]


class TenantCredentials:
    """Provisions, rotates and removes the namespaces' Redis users (thread-safe)."""

    def __init__(
        self,
        client: redis.Redis,
        kube: KubeApi,
        settings: Tenancy,
        base_url: str,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.kube = kube
        self.settings = settings
        self.base_url = settings.broker_url or base_url
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._applied: dict[str, tuple[str, float]] = {}  # namespace -> (rules, checked at)
        # namespace -> (its records, read at): this operator is their only writer, so a
        # pool's reconcile reads them from Redis only once per check period.
        self._known: dict[str, tuple[dict[str, PoolCredential], float]] = {}

    @staticmethod
    def state_key(namespace: str) -> str:
        return keys.tenancy_state_key(namespace)

    def ensure(self, pool: PoolRef, rotate_token: str = "") -> int:
        """The pool's credential generation (for its pod template), provisioning the user,
        the password and the Secret when missing, and rotating once per new token.
        Raises redis.RedisError or ApiException; nothing is half-written that the
        next call does not finish."""
        with self._lock:
            try:
                return self._ensure(pool, rotate_token)
            except Exception:
                self._known.pop(pool.namespace, None)  # read Redis's record again next time
                raise

    def _ensure(self, pool: PoolRef, rotate_token: str) -> int:
        now_ms = int(self._clock() * 1000)
        records = self._records(pool.namespace)
        mine = records.get(pool.uid)
        if mine is None or (rotate_token and rotate_token not in mine.tokens):
            mine = self._rotate(pool, records, rotate_token, now_ms)
            self.client.hset(self.state_key(pool.namespace), pool.uid, mine.dump())
        else:
            expired = [(h, until) for h, until in mine.retiring if until <= now_ms]
            if expired:
                mine.retiring = [item for item in mine.retiring if item not in expired]
                self.client.hset(self.state_key(pool.namespace), pool.uid, mine.dump())
            self._apply(pool.namespace, records, now_ms, force=bool(expired))
        return mine.generation

    def release(self, namespace: str, uid: str) -> None:
        """A pool is gone: its password goes, and the user with the namespace's last pool."""
        with self._lock:
            self.client.hdel(self.state_key(namespace), uid)
            records = self._records(namespace)
            records.pop(uid, None)
            if records:
                self._apply(namespace, records, int(self._clock() * 1000), force=True)
                return
            self.client.acl_deluser(tenancy.user_name(namespace))
            self.client.delete(self.state_key(namespace))
            self._applied.pop(namespace, None)
            self._known.pop(namespace, None)
            logger.info("removed the Redis user of namespace %s (its last pool is gone)", namespace)

    def collect(self, live: Iterable[tuple[str, str]]) -> None:
        """Release the passwords of pools that no longer exist ((namespace, uid) of the
        live ones): pools deleted while the operator was away."""
        alive = set(live)
        for key in self.client.scan_iter(match=f"{keys.TENANCY_STATE_PREFIX}*", count=500):
            namespace = (key.decode() if isinstance(key, bytes) else str(key)).removeprefix(
                keys.TENANCY_STATE_PREFIX
            )
            for uid in self.client.hkeys(key):
                text = uid.decode() if isinstance(uid, bytes) else str(uid)
                if (namespace, text) not in alive:
                    self.release(namespace, text)

    def _records(self, namespace: str) -> dict[str, PoolCredential]:
        known = self._known.get(namespace)
        if known is not None and self._monotonic() - known[1] < CHECK_SECONDS:
            return known[0]
        raw: Mapping[bytes, bytes] = self.client.hgetall(self.state_key(namespace))  # type: ignore[assignment]
        found: dict[str, PoolCredential] = {}
        for uid, value in raw.items():
            try:
                found[uid.decode()] = PoolCredential.parse(value)
            except (ValueError, TypeError, AttributeError):
                logger.error("unreadable credential record of %s in %s", uid, namespace)
        self._known[namespace] = (found, self._monotonic())
        return found

    def _rotate(
        self, pool: PoolRef, records: dict[str, PoolCredential], token: str, now_ms: int
    ) -> PoolCredential:
        old = records.get(pool.uid)
        password = secrets.token_urlsafe(32)
        fresh = PoolCredential(
            generation=(old.generation if old else 0) + 1,
            digest=_digest(password),
            tokens=[*(old.tokens if old else []), *([token] if token else [])][-_TOKENS_KEPT:],
        )
        if old is not None and old.digest:
            until = now_ms + int(self.settings.rotation_grace_seconds * 1000)
            fresh.retiring = [*((h, u) for h, u in old.retiring if u > now_ms), (old.digest, until)]
        # The user first knows the new password, then the Secret carries it: a pod
        # started in between still logs in with the old one.
        records[pool.uid] = fresh
        self._apply(pool.namespace, records, now_ms, force=True)
        self.kube.write_secret(pool.namespace, self._secret(pool, password, fresh.generation))
        logger.info(
            "Redis credential of WorkerPool %s/%s: generation %d",
            pool.namespace,
            pool.name,
            fresh.generation,
        )
        return fresh

    def _secret(self, pool: PoolRef, password: str, generation: int) -> dict[str, Any]:
        url = tenancy.credential_url(self.base_url, pool.namespace, password)
        data = {
            tenancy.URL_KEY: url,
            "username": tenancy.user_name(pool.namespace),
            "password": password,
        }
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": secret_name(pool.name),
                "namespace": pool.namespace,
                "labels": pool_labels(pool.name),
                "annotations": {"beatkeeper.dev/credential-generation": str(generation)},
                "ownerReferences": [owner_reference(pool)],
            },
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    def _apply(
        self, namespace: str, records: Mapping[str, PoolCredential], now_ms: int, *, force: bool
    ) -> None:
        hashes = sorted({h for record in records.values() for h in record.valid_hashes(now_ms)})
        rules = tenancy.acl_rules(namespace, hashes, tenancy.database(self.base_url))
        text = " ".join(rules)
        applied = self._applied.get(namespace)
        fresh = applied is not None and self._monotonic() - applied[1] < CHECK_SECONDS
        if not force and applied is not None and applied[0] == text and fresh:
            return
        user = tenancy.user_name(namespace)
        if not force and applied is not None and applied[0] == text:
            # Checked every period: a restarted Redis without an ACL file forgot the user.
            if self.client.acl_getuser(user):
                self._applied[namespace] = (text, self._monotonic())
                return
            logger.warning("the Redis user %s was missing; provisioning it again", user)
        # The rules as Redis spells them (redis-py's acl_setuser has no `reset` of all).
        command: Any = self.client.execute_command
        command("ACL", "SETUSER", user, *rules)
        self._applied[namespace] = (text, self._monotonic())
