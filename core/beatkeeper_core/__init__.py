"""Beatkeeper's shared core: what the operator, beat and the worker all import.

- `contract`: the entry definition, run envelope and run record, and key names.
- `schedules`, `firing`: cron, interval and one-off schedules; which slots fire.
- `redbeat`: the celery-redbeat data model Beatkeeper writes and beat reads.
- `settings`: the typed settings, the only module that reads the environment.

It imports no program (operator, beat, worker) and no Kubernetes code, so the
worker image carries it with pydantic and redis only.
"""

__version__ = "0.1.0"
