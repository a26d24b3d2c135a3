"""WorkerPool: where runs execute, and how the pool scales (the README, "The API")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from beatkeeper.api.base import CRD, ApiModel, Condition, StatusTime, cel, conditions_field
from beatkeeper_core.contract import allowed_task_globs

KIND = "WorkerPool"
PLURAL = "workerpools"

PYTHON_MODULE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
TASK_GLOB = r"^[A-Za-z0-9_.:*?\[\]!-]+$"
K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

Quantity = Annotated[int | str, Field(json_schema_extra=CRD.INT_OR_STRING)]


class ScaleUp(ApiModel):
    """How fast the pool grows."""

    stabilization_seconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="Scale up only to the lowest desired count seen over this window (0: at once).",
    )
    max_step: int | None = Field(
        default=None, ge=1, le=1000, description="At most this many replicas added per step."
    )


class ScaleDown(ApiModel):
    """How slowly the pool shrinks."""

    stabilization_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="Scale down only to the highest desired count seen over this window.",
    )
    max_step: int | None = Field(
        default=None, ge=1, le=1000, description="At most this many replicas removed per step."
    )


class Autoscaling(ApiModel):
    """Scale the pool's Deployment by its real backlog (queued + reserved + running)."""

    cel_rules = (
        cel(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must not be greater than maxReplicas",
            field_path=".minReplicas",
        ),
    )

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not be greater than maxReplicas")
        return self

    min_replicas: int = Field(
        default=0, ge=0, le=1000, description="Lowest replica count; 0 allows scale to zero."
    )
    max_replicas: int = Field(ge=1, le=1000, description="Highest replica count.")
    target_per_replica: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="Backlog one replica should carry; defaults to concurrency.",
    )
    activation_backlog: int = Field(
        default=0,
        ge=0,
        le=100000,
        description="A pool at zero replicas starts only when the backlog exceeds this.",
    )
    poll_seconds: int = Field(
        default=1, ge=1, le=300, description="How often the backlog is measured."
    )
    scale_up: ScaleUp = Field(default_factory=ScaleUp, description="Scale-up behaviour.")
    scale_down: ScaleDown = Field(default_factory=ScaleDown, description="Scale-down behaviour.")
    prewarm_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description=(
            "A pool at zero gets one replica this many seconds before the next scheduled run "
            "of a ScheduledTask that targets it."
        ),
    )


class Resources(ApiModel):
    """Compute resources of each worker container."""

    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Limits, such as cpu: 500m, memory: 512Mi."
    )
    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Requests, such as cpu: 100m, memory: 256Mi."
    )


class PodTemplate(ApiModel):
    """Pod-level overrides for the worker Deployment."""

    resources: Resources | None = Field(default=None, description="Container resources.")
    env: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra environment variables (core/v1 EnvVar objects).",
        json_schema_extra={"items": {"type": "object", **CRD.PRESERVE}},
    )
    env_from: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra environment sources (core/v1 EnvFromSource objects).",
        json_schema_extra={"items": {"type": "object", **CRD.PRESERVE}},
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must run on."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations (core/v1 Toleration objects).",
        json_schema_extra={"items": {"type": "object", **CRD.PRESERVE}},
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Affinity (a core/v1 Affinity object).",
        json_schema_extra=CRD.PRESERVE,
    )
    service_account_name: (
        Annotated[str, StringConstraints(pattern=K8S_NAME, max_length=253)] | None
    ) = Field(default=None, description="ServiceAccount the worker pods run as.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the worker pods."
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the pool's namespace."""

    name: Annotated[str, StringConstraints(pattern=K8S_NAME, max_length=253)] = Field(
        default="beatkeeper-redis", description="Secret name."
    )
    key: str = Field(default="url", min_length=1, max_length=253, description="Key in the Secret.")


class WorkerPoolSpec(ApiModel):
    """A pool of Celery workers (one Deployment) serving this namespace's ScheduledTasks."""

    image: str = Field(
        min_length=1,
        max_length=512,
        description="Worker image: beatkeeper's worker image, or one built FROM it.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy of the worker container."
    )
    task_modules: list[Annotated[str, StringConstraints(pattern=PYTHON_MODULE, max_length=200)]] = (
        Field(
            default_factory=list,
            max_length=100,
            description="Python modules the worker imports to register tasks, such as myapp.tasks.",
        )
    )
    allowed_tasks: list[Annotated[str, StringConstraints(pattern=TASK_GLOB, max_length=200)]] = (
        Field(
            default_factory=list,
            max_length=100,
            description=(
                "Glob patterns of task names ScheduledTasks may call, such as beatkeeper.http "
                "or myapp.reports.*; any other task is refused at admission and by the worker. "
                "Empty or absent: only the tasks of taskModules (<module>.*) and the built-ins "
                "beatkeeper.http and beatkeeper.sleep."
            ),
        )
    )
    allowed_hosts: list[Annotated[str, StringConstraints(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        max_length=100,
        description=(
            "Hosts or IP networks beatkeeper.http may call although they are link-local or "
            "cloud-metadata addresses (refused by default)."
        ),
    )
    concurrency: int = Field(
        default=2, ge=1, le=256, description="Worker processes (prefork) or threads per pod."
    )
    pool: Literal["prefork", "threads"] = Field(
        default="prefork",
        description="Celery execution pool; prefork enforces hard time limits, threads cannot.",
    )
    prefetch: int = Field(
        default=1, ge=1, le=100, description="Messages each process reserves ahead (multiplier)."
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Replica count when autoscaling is absent (the scale subresource's field).",
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale by backlog; when set, replicas is ignored."
    )
    template: PodTemplate | None = Field(default=None, description="Pod-level overrides.")
    termination_grace_period_seconds: int = Field(
        default=120,
        ge=0,
        le=86400,
        description="Time a stopping worker has to finish running tasks (warm shutdown).",
    )
    broker_secret_ref: SecretKeyRef = Field(
        default_factory=SecretKeyRef,
        description="The Secret key holding the Redis URL the workers use (redis:// or rediss://).",
    )

    @property
    def allowed(self) -> tuple[str, ...]:
        """The globs a task name is judged by (`contract.allowed_task_globs`)."""
        return allowed_task_globs(self.allowed_tasks, self.task_modules)


class WorkerPoolStatus(ApiModel):
    """Observed state of the pool: written by the operator through the status subresource."""

    observed_generation: int = Field(
        default=0,
        ge=0,
        description="The metadata.generation the operator last acted on; 0 until it has seen "
        "the object (the CRD defaults it, so GitOps tools wait for the operator).",
    )
    conditions: list[Condition] = conditions_field()
    queue: str | None = Field(default=None, description="The Redis queue this pool consumes.")
    replicas: int = Field(default=0, ge=0, description="Pods of the Deployment.")
    ready_replicas: int = Field(default=0, ge=0, description="Ready pods of the Deployment.")
    desired_replicas: int = Field(default=0, ge=0, description="What the pool wants now.")
    backlog: int = Field(default=0, ge=0, description="Queued + reserved + running tasks.")
    active: int = Field(default=0, ge=0, description="Tasks running now.")
    last_scale_time: StatusTime | None = Field(
        default=None, description="When the operator last changed the replica count."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the pods (for the scale subresource)."
    )
    registered_tasks: list[str] = Field(
        default_factory=list,
        description=(
            "The task names the pool's workers register (what they announced at start-up); "
            "admission warns about a ScheduledTask whose task is not among them."
        ),
    )
