"""The Kubernetes API of Beatkeeper: ScheduledTask and WorkerPool (beatkeeper.dev/v1alpha1).

Frozen pydantic models parse specs at the boundary; `beatkeeper.api.crd` generates
the CRDs from them and `beatkeeper.api.validation` adds the checks CEL cannot do.
"""
