"""Beatkeeper: a Kubernetes operator for scheduled, retrying background work on Celery.

This distribution holds the operator (`beatkeeper.operator`), the API models
and admission checks (`beatkeeper.api`), the `beatkeeper` command line and the
local environment (`beatkeeper_devenv`). The shared core is `beatkeeper_core`
and the worker and beat are `beatkeeper_worker`, separate distributions so the
worker image carries neither kopf nor the Kubernetes client.
"""

__version__ = "0.1.0"
