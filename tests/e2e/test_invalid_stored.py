"""An invalid object stored while the webhook was down is Stalled, not a crash loop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from e2e_helpers import apply, condition, eventually, get_json

from beatkeeper_devenv.kube import kubectl

BAD_CRON = "*/61 * * * *"
MESSAGE = f'spec.schedule: "{BAD_CRON}": minute 61 is out of range 0-59'


def _task(schedule: str) -> dict[str, Any]:
    return {
        "apiVersion": "beatkeeper.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "sneaky"},
        "spec": {"schedule": schedule, "workerPool": "p", "task": {"name": "beatkeeper.sleep"}},
    }


def _events(kubeconfig: Path, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = get_json(kubeconfig, "events", "-n", namespace)["items"]
    return [e for e in items if e["reason"] == reason and e["involvedObject"]["name"] == "sneaky"]


def test_invalid_spec_stored_while_webhook_down_is_stalled(
    kubeconfig: Path, operator: Any, namespace: str
) -> None:
    operator.stop()
    try:
        apply(kubeconfig, namespace, _task(BAD_CRON))  # no webhook: only the schema checks
    finally:
        operator.start()

    def stalled() -> dict[str, Any] | None:
        """the operator marked the object Stalled=True, reason InvalidSpec"""
        obj = get_json(kubeconfig, "st", "sneaky", "-n", namespace)
        found = condition(obj, "Stalled")
        return obj if found and found["status"] == "True" else None

    obj = eventually(stalled, timeout=30)
    stalled_condition = condition(obj, "Stalled")
    assert stalled_condition is not None
    assert stalled_condition["reason"] == "InvalidSpec"
    assert stalled_condition["message"] == MESSAGE
    assert stalled_condition["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Ready")["status"] == "False"  # type: ignore[index]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert (
        eventually(lambda: _events(kubeconfig, namespace, "InvalidSpec"))[0]["message"] == MESSAGE
    )

    # No retry loop: several resync periods (2 s here) later nothing was rewritten.
    version = obj["metadata"]["resourceVersion"]
    time.sleep(7)
    again = get_json(kubeconfig, "st", "sneaky", "-n", namespace)
    assert again["metadata"]["resourceVersion"] == version
    assert len(_events(kubeconfig, namespace, "InvalidSpec")) == 1
    assert operator.component.running()

    # Metadata-only changes still pass the webhook for the stored bad spec.
    kubectl(kubeconfig, "label", "st", "sneaky", "-n", namespace, "team=data")

    # Fixing the spec clears Stalled.
    apply(kubeconfig, namespace, _task("*/5 * * * *"))

    def recovered() -> bool:
        """Stalled=False after the fix"""
        fixed = get_json(kubeconfig, "st", "sneaky", "-n", namespace)
        found = condition(fixed, "Stalled")
        return bool(found and found["status"] == "False")

    eventually(recovered, timeout=30)
    kubectl(kubeconfig, "delete", "st", "sneaky", "-n", namespace, "--timeout=30s")
