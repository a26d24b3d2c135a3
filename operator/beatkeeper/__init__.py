"""Beatkeeper: a Kubernetes operator for scheduled, retrying background work on Celery.

Kept import-light: the worker image and beat import `beatkeeper.contract` and
`beatkeeper.schedules` without pulling in kopf or the Kubernetes client.
"""

__version__ = "0.1.0"
