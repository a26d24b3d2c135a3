"""Tasks the example ScheduledTasks call: what a team's own task module looks like.

Build a worker image FROM the Beatkeeper worker image with this package
installed, and name it in the WorkerPool's `taskModules`.
"""

from __future__ import annotations

from celery import current_app, current_task, shared_task

from beatkeeper_worker import current_run


@shared_task(name="beatkeeper_examples.tasks.flaky")  # type: ignore[untyped-decorator]
def flaky(succeed_on_attempt: int = 3) -> str:
    """Fails until attempt `succeed_on_attempt`: status shows Retrying, then Succeeded."""
    run = current_run()
    attempt = run.attempt if run else 1
    if attempt < succeed_on_attempt:
        raise RuntimeError(f"attempt {attempt}: the upstream is not ready yet")
    return f"succeeded on attempt {attempt}"


@shared_task(name="beatkeeper_examples.tasks.fan_out")  # type: ignore[untyped-decorator]
def fan_out(count: int = 20, seconds: float = 2.0) -> int:
    """A scheduled job that splits its work: `count` sleeps on this pool's own queue.

    The queued work is the backlog the pool's autoscaler sees and scales to.
    """
    # The queue this run came from: the pool's own (current_task is the entry task).
    queue = (current_task.request.delivery_info or {}).get("routing_key") if current_task else None
    for _ in range(count):
        current_app.send_task("beatkeeper.sleep", args=[seconds], queue=queue)
    return count
