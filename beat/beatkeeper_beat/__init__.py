"""Beatkeeper's beat: Celery beat with a scheduler that fires the operator's redbeat entries.

- `scheduler`: the scheduler (batched due entries, a short poll, a lock of seconds) and
  `main`, the `beatkeeper-beat` / `beatkeeper beat` program.
- `settings`: `BeatSettings`, the variables beat reads.
- `metrics`: beat's Prometheus metrics.

It imports the core only: no operator code, no worker code, no Kubernetes client.
"""
