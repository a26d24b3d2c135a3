"""The kopf operator: admission, ScheduledTask and WorkerPool reconciliation, run status.

`main` only registers handlers with kopf. Each resource has three thin layers:
handler (kopf wiring) -> planner (pure: spec + observed + now -> desired) ->
adapter (the only code that talks to Redis or to the Kubernetes API).
"""
