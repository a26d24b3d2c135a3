"""No confused deputy: a WorkerPool's author must hold the rights its Deployment uses.

The operator creates each pool's Deployment with its own rights, so without a
check anyone who may create a WorkerPool would get a Deployment (any image, any
ServiceAccount and Secret reference of the namespace) without being allowed to
create one. The validating webhook therefore asks the apiserver, with a
SubjectAccessReview built from the AdmissionReview's `userInfo` exactly
(username, uid, groups, extra), whether the requesting user may themselves:

- `create deployments.apps` in the pool's namespace: always;
- `create pods` in the namespace, when the pool names
  `spec.template.serviceAccountName`: in Kubernetes' model whoever may create pods
  in a namespace may run them as any of its ServiceAccounts, so that is what
  "may run pods as that ServiceAccount" means. (Kubernetes itself lets a
  Deployment's author name any ServiceAccount; this check is stricter, as issue 16
  asks.)

Which requests are checked is the webhook's choice (see `webhook.review_worker_pool`).

Answers are cached: an allowed one for `ttl` seconds (5 by default), keyed by the
whole identity and the permission, so applying 1,000 pools makes one review per
permission every few seconds, not 1,000; a revoked right is thus seen within
`ttl`. A denial is never cached (a user just granted a Role can retry at once).
If a review cannot be made (the apiserver unreachable or slow, the operator not
allowed to create SubjectAccessReviews), the pool is refused with a message that
says so: this check fails closed. Every check is bounded by `budget` seconds in
all (4 by default, below the webhook's 10 s timeout, after which the apiserver
would admit the object since the webhook's failure policy is Ignore).

Synchronous (the webhook serves in its own threads): a client of its own, built
from the operator's Kubernetes client configuration (the in-cluster
ServiceAccount or the kubeconfig, as `kubeapi.api_client` loaded it), without
urllib3's hidden retries, so the budget is the whole story.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, AuthorizationV1Api
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

TTL_SECONDS = 5.0
BUDGET_SECONDS = 4.0
_CAPACITY = 4096  # cached answers at most; an identity churning tokens cannot grow it further


@dataclass(frozen=True)
class Requester:
    """The user of an AdmissionReview request, as the apiserver authenticated them."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_user_info(cls, info: object) -> Requester | None:
        """None when `info` names no user (a real AdmissionReview always does)."""
        if not isinstance(info, Mapping):
            return None
        username = info.get("username")
        if not isinstance(username, str) or not username:
            return None
        groups = info.get("groups") or []
        extra = info.get("extra") or {}
        return cls(
            username=username,
            uid=str(info.get("uid") or ""),
            groups=tuple(str(group) for group in groups),
            extra=tuple(
                (str(key), tuple(str(value) for value in values or ()))
                for key, values in (extra.items() if isinstance(extra, Mapping) else ())
            ),
        )

    def review_spec(self) -> dict[str, Any]:
        """The SubjectAccessReview spec's user fields."""
        spec: dict[str, Any] = {"user": self.username, "groups": list(self.groups)}
        if self.uid:
            spec["uid"] = self.uid
        if self.extra:
            spec["extra"] = {key: list(values) for key, values in self.extra}
        return spec


@dataclass(frozen=True)
class Permission:
    verb: str
    group: str
    resource: str

    def __str__(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def attributes(self, namespace: str) -> dict[str, str]:
        return {
            "namespace": namespace,
            "verb": self.verb,
            "group": self.group,
            "resource": self.resource,
        }


CREATE_DEPLOYMENTS = Permission("create", "apps", "deployments")
CREATE_PODS = Permission("create", "", "pods")


@dataclass(frozen=True)
class Need:
    """A permission the author must hold, and why (the refusal's second half)."""

    permission: Permission
    why: str


@dataclass(frozen=True)
class Refusal:
    code: int
    reason: str
    message: str

    def status(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason, "message": self.message}


def pool_needs(spec: Mapping[str, Any] | None) -> list[Need]:
    """What the author of a WorkerPool with this spec must be allowed to do themselves."""
    needs = [
        Need(
            CREATE_DEPLOYMENTS,
            "a WorkerPool creates a Deployment with the operator's rights, so its author "
            "needs that right too",
        )
    ]
    template = (spec or {}).get("template")
    account = template.get("serviceAccountName") if isinstance(template, Mapping) else None
    if account:
        needs.append(
            Need(
                CREATE_PODS,
                f"spec.template.serviceAccountName {json.dumps(str(account))} runs the pool's "
                "pods as that ServiceAccount, which only a user who may create pods in the "
                "namespace may do",
            )
        )
    return needs


class ReviewFailed(Exception):
    """A SubjectAccessReview could not be made or read."""


# Posts one SubjectAccessReview body within `timeout` seconds; returns its status.
Review = Callable[[Mapping[str, Any], float], Mapping[str, Any]]


def apiserver_review(client: ApiClient) -> tuple[Review, Callable[[], None]]:
    """Reviews posted with the credentials of `client` (the operator's), on a connection
    pool of their own and with no retries below the caller's budget; and its closer."""
    configuration = copy.deepcopy(client.configuration)
    configuration.retries = False
    own = ApiClient(configuration)
    own.user_agent = client.user_agent
    api: Any = AuthorizationV1Api(own)  # a plain dict in, the raw response out

    def review(body: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
        try:
            response = api.create_subject_access_review(
                dict(body), _request_timeout=timeout, _preload_content=False
            )
            answer = json.loads(response.data)
        except ApiException as error:
            raise ReviewFailed(_api_error(error)) from None
        except Exception as error:  # urllib3's transport errors, a body that is not JSON
            raise ReviewFailed(f"{type(error).__name__}: {error}"[:300]) from None
        status = answer.get("status") if isinstance(answer, Mapping) else None
        if not isinstance(status, Mapping):
            raise ReviewFailed("the SubjectAccessReview came back without a status")
        return status

    return review, own.close


def _api_error(error: ApiException) -> str:
    detail = error.reason or ""
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        detail = json.loads(error.body or "{}").get("message") or detail
    if error.status == 403:
        detail += " (the operator's RBAC needs create on subjectaccessreviews.authorization.k8s.io)"
    return f"{error.status} {detail}"[:500]


_Key = tuple[Requester, str, Permission]


class AccessChecker:
    """Checks a requester's rights with SubjectAccessReviews; thread-safe."""

    def __init__(
        self,
        review: Review,
        *,
        ttl: float = TTL_SECONDS,
        budget: float = BUDGET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self._review, self.ttl, self.budget, self._clock = review, ttl, budget, clock
        self._close = close
        self._allowed: dict[_Key, float] = {}  # -> when the answer expires
        self._lock = threading.Lock()
        self.reviews = 0  # SubjectAccessReviews posted so far

    @classmethod
    def for_client(cls, client: ApiClient, **options: Any) -> AccessChecker:
        review, close = apiserver_review(client)
        return cls(review, close=close, **options)

    def close(self) -> None:
        self._close()

    def refusal(self, user_info: object, namespace: str, needs: Sequence[Need]) -> Refusal | None:
        """None when the requester holds every permission of `needs` in `namespace`."""
        requester = Requester.from_user_info(user_info)
        if requester is None:
            return Refusal(
                403,
                "Forbidden",
                "the request names no user (userInfo), so whether its author may create "
                "what a WorkerPool creates cannot be checked",
            )
        deadline = self._clock() + self.budget
        for need in needs:
            try:
                allowed, why_not = self._allowed_to(requester, namespace, need.permission, deadline)
            except ReviewFailed as error:
                logger.warning(
                    "access review of %s for %s in %s failed: %s",
                    requester.username, need.permission, namespace, error,
                )  # fmt: skip
                return Refusal(
                    503,
                    "ServiceUnavailable",
                    f"whether user {json.dumps(requester.username)} may "
                    f"{need.permission.verb} {need.permission} in namespace "
                    f"{json.dumps(namespace)} could not be checked (SubjectAccessReview: "
                    f"{error}); WorkerPools are refused until it can be, try again",
                )
            if not allowed:
                detail = f" ({why_not})" if why_not else ""
                return Refusal(
                    403,
                    "Forbidden",
                    f"user {json.dumps(requester.username)} may not {need.permission.verb} "
                    f"{need.permission} in namespace {json.dumps(namespace)}: {need.why}"
                    f"{detail}",
                )
        return None

    def _allowed_to(
        self, requester: Requester, namespace: str, permission: Permission, deadline: float
    ) -> tuple[bool, str]:
        key = (requester, namespace, permission)
        now = self._clock()
        with self._lock:
            expires = self._allowed.get(key)
            if expires is not None and now < expires:
                return True, ""
        remaining = deadline - now
        if remaining <= 0:
            raise ReviewFailed(f"no time left within {self.budget:g} s")
        with self._lock:
            self.reviews += 1
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                **requester.review_spec(),
                "resourceAttributes": permission.attributes(namespace),
            },
        }
        status = self._review(body, remaining)
        if status.get("allowed") is True:
            self._remember(key, self._clock() + self.ttl)
            return True, ""
        why = str(status.get("reason") or status.get("evaluationError") or "")
        return False, why

    def _remember(self, key: _Key, expires: float) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._allowed) >= _CAPACITY:
                now = self._clock()
                for stale in [k for k, until in self._allowed.items() if until <= now]:
                    del self._allowed[stale]
                if len(self._allowed) >= _CAPACITY:
                    self._allowed.clear()
            self._allowed[key] = expires
