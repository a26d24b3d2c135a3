"""Beatkeeper: a Kubernetes operator for scheduled, retrying background work on Celery.

This distribution holds the operator (`beatkeeper.operator`), the API models and
admission checks (`beatkeeper.api`), the webhook's certificates (`beatkeeper.pki`)
and the `beatkeeper` command line (`cli`, `runs_cli`, `validate_cli`). The core
(`beatkeeper_core`), beat (`beatkeeper_beat`), the worker (`beatkeeper_worker`) and
the local environment (`beatkeeper_devenv`) are distributions of their own, so each
image carries only its programs: the worker image neither kopf nor the Kubernetes
client.
"""

__version__ = "0.1.0"
