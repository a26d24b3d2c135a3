"""`beatkeeper beat` processes against a real Redis: on time, catch-up, failover."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from worker_helpers import scrape

from beatkeeper_core import contract, keys
from beatkeeper_core.redbeat import RedbeatStore
from beatkeeper_devenv.cluster import free_port
from beatkeeper_devenv.netproxy import Partition
from beatkeeper_devenv.processes import Component, Supervisor, wait_until


def wait_for(check: Callable[[], Any], timeout: float, why: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{why} within {timeout} s")


@dataclass
class Beats:
    supervisor: Supervisor
    redis_url: str
    prefix: str
    client: redis.Redis

    def start(self, name: str = "beat", lock_seconds: int = 5, metrics_port: int = 0) -> Component:
        env = {
            **os.environ,
            "BEATKEEPER_BROKER_URL": self.redis_url,
            "BEATKEEPER_REDBEAT_PREFIX": self.prefix,
            "BEATKEEPER_BEAT_LOCK_SECONDS": str(lock_seconds),
            "BEATKEEPER_BEAT_METRICS_PORT": str(metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
        component = self.supervisor.start(
            name, [sys.executable, "-m", "beatkeeper.cli", "beat"], env=env
        )
        return component

    def holder_ready(self, component: Component) -> bool:
        return "Acquired lock" in component.log_path.read_text()

    @property
    def store(self) -> RedbeatStore:
        return RedbeatStore(self.client, self.prefix)

    def records(self, namespace: str) -> list[contract.RunRecord]:
        found = []
        for record in contract.stream_records(self.client.xrange(keys.RUN_RECORDS_STREAM)):  # type: ignore[arg-type]
            if record.namespace == namespace:
                found.append(record)
        return found


@pytest.fixture
def beats(redis_url: str, tmp_path: Path) -> Iterator[Beats]:
    supervisor = Supervisor(tmp_path / "logs")
    client = redis.Redis.from_url(redis_url)
    try:
        yield Beats(supervisor, redis_url, f"rb-{uuid.uuid4().hex[:6]}:", client)
    finally:
        supervisor.stop_all()
        client.close()


def start_redis_on(supervisor: Supervisor, workdir: Path, port: int) -> Component:
    """redis-server on a port chosen before it starts (the beats already dial it)."""
    workdir.mkdir(parents=True)
    component = supervisor.start(
        "redis",
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
         "--save", "", "--appendonly", "no"],
    )  # fmt: skip
    wait_until(component, lambda: _pings(port), timeout=30)
    return component


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def entry(
    namespace: str, *, anchor: dt.datetime, every: int, **changes: Any
) -> contract.EntryDefinition:
    base = contract.EntryDefinition(
        name=f"{namespace}/t",
        namespace=namespace,
        object_name="t",
        queue=f"beatkeeper.{namespace}.p",
        schedule=contract.ScheduleSpec(kind="every", every_seconds=every, anchor=anchor),
        task=contract.TaskCall(name="beatkeeper.sleep"),
    )
    return base.model_copy(update=changes)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_new_entry_fires_on_time_not_after_the_loop_interval(beats: Beats) -> None:
    beat = beats.start()
    wait_for(lambda: beats.holder_ready(beat), 30, "beat took its lock")
    namespace = f"n{uuid.uuid4().hex[:6]}"
    anchor = now().replace(microsecond=0)
    beats.store.upsert_if_changed([entry(namespace, anchor=anchor, every=2)], now())
    first = anchor + dt.timedelta(seconds=2)
    pending = wait_for(
        lambda: [r for r in beats.records(namespace) if r.state == "Pending"],
        10,
        "a run was published",
    )
    assert pending[0].slot == first
    lateness = (pending[0].time - first).total_seconds()
    assert -0.05 <= lateness < 1.0, f"fired {lateness:.3f} s after its slot"
    wait_for(lambda: len(beats.records(namespace)) >= 3, 10, "three runs 2 s apart")
    slots = [r.slot for r in beats.records(namespace)]
    assert slots[:3] == [first + dt.timedelta(seconds=2 * i) for i in range(3)]


def test_downtime_catch_up_runs_latest_and_records_missed(beats: Beats) -> None:
    namespace = f"n{uuid.uuid4().hex[:6]}"
    anchor = now().replace(microsecond=0) - dt.timedelta(seconds=65)
    definition = entry(namespace, anchor=anchor, every=5)
    # Armed 60 s ago, then beat was down: 12 slots passed, the last ones inside the grace period.
    beats.store.upsert_if_changed([definition], anchor)
    port = free_port()
    beat = beats.start(metrics_port=port)
    wait_for(lambda: beats.holder_ready(beat), 30, "beat took its lock")
    wait_for(
        lambda: (
            {"Pending", "Missed"}
            <= {r.state for r in beats.records(namespace) if r.trigger == "catch-up"}
        ),
        10,
        "catch-up ran and the rest was recorded Missed",
    )
    records = beats.records(namespace)
    catch_up = [r for r in records if r.trigger == "catch-up" and r.state == "Pending"]
    missed = [r for r in records if r.state == "Missed"]
    on_time = [r for r in records if r.trigger == "schedule" and r.state == "Pending"]
    assert len(catch_up) == 1  # catchUp default: only the latest missed slot
    assert missed
    assert all(m.reason == "MissedWhileDown" for m in missed)
    assert max(m.slot for m in missed) < catch_up[0].slot
    assert all(r.slot > catch_up[0].slot for r in on_time)
    run_ids = [r.run_id for r in records if r.state in ("Pending", "Missed")]
    assert len(run_ids) == len(set(run_ids))
    # beat's /metrics says the same (parsed with prometheus-client's parser).
    samples = scrape(port)
    assert samples[("beatkeeper_beat_missed_slots_total", ())] == len(missed)
    assert samples[("beatkeeper_beat_fires_total", (("trigger", "catch-up"),))] == 1
    assert samples[("beatkeeper_beat_fires_total", (("trigger", "schedule"),))] >= len(on_time)
    assert samples[("beatkeeper_beat_lock_held", ())] == 1
    assert samples[("beatkeeper_beat_lock_acquisitions_total", ())] == 1


def test_standby_takes_over_when_the_active_beat_is_killed(beats: Beats) -> None:
    first = beats.start("beat-a")
    wait_for(lambda: beats.holder_ready(first), 30, "beat-a took the lock")
    second = beats.start("beat-b")
    time.sleep(2)
    assert not beats.holder_ready(second)
    namespace = f"n{uuid.uuid4().hex[:6]}"
    anchor = now().replace(microsecond=0)
    beats.store.upsert_if_changed([entry(namespace, anchor=anchor, every=1)], now())
    wait_for(lambda: len(beats.records(namespace)) >= 2, 10, "beat-a fires")

    os.killpg(first.pid, signal.SIGKILL)
    killed = now()
    first.popen.wait()
    beats.supervisor.components.remove(first)
    wait_for(lambda: beats.holder_ready(second), 30, "beat-b took the lock")
    wait_for(
        lambda: any(r.time > killed + dt.timedelta(seconds=1) for r in beats.records(namespace)),
        30,
        "beat-b fires",
    )

    pending = [r for r in beats.records(namespace) if r.state == "Pending"]
    run_ids = [r.run_id for r in pending]
    assert len(run_ids) == len(set(run_ids)), "a slot was published by both beats"
    slots = sorted(r.slot for r in pending)
    assert slots == [slots[0] + dt.timedelta(seconds=i) for i in range(len(slots))], (
        "a slot was lost"
    )


def test_beats_started_before_redis_fire_each_slot_once(tmp_path: Path) -> None:
    """A fresh install starts beat and Redis together: a beat that could not take the
    lock at start-up must take it later, not fire without it beside the other one."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    supervisor = Supervisor(tmp_path / "logs")
    client = redis.Redis.from_url(url)
    try:
        beats = Beats(supervisor, url, f"rb-{uuid.uuid4().hex[:6]}:", client)
        early = [beats.start("beat-a"), beats.start("beat-b")]
        wait_for(
            lambda: all("Error" in b.log_path.read_text() for b in early),
            60,
            "both beats met an unreachable Redis at start-up",
        )
        start_redis_on(supervisor, tmp_path / "redis", port)
        namespace = f"n{uuid.uuid4().hex[:6]}"
        anchor = now().replace(microsecond=0)
        beats.store.upsert_if_changed([entry(namespace, anchor=anchor, every=1)], now())
        wait_for(
            lambda: len([r for r in beats.records(namespace) if r.state == "Pending"]) >= 5,
            30,
            "five slots fired",
        )
        run_ids = [r.run_id for r in beats.records(namespace) if r.state == "Pending"]
        assert len(run_ids) == len(set(run_ids)), "a slot was published by both beats"
        assert sum(beats.holder_ready(b) for b in early) == 1
    finally:
        supervisor.stop_all()
        client.close()


def test_beat_fires_an_entry_a_newer_operator_wrote(beats: Beats) -> None:
    """A rolling upgrade: the operator is one version ahead and writes fields beat lacks."""
    beat = beats.start()
    wait_for(lambda: beats.holder_ready(beat), 30, "beat took its lock")
    namespace = f"n{uuid.uuid4().hex[:6]}"
    definition = entry(namespace, anchor=now().replace(microsecond=0), every=1)
    beats.store.upsert_if_changed([definition], now())
    raw = json.loads(definition.model_dump_json())
    raw.update(version=2, added_in_v2={"any": "value"})
    raw["schedule"]["added_in_v2"] = True
    key = keys.redbeat_key(namespace, "t", beats.prefix)
    assert beats.client.hexists(key, "definition")
    beats.client.hset(key, "definition", json.dumps(raw))
    wait_for(
        lambda: len([r for r in beats.records(namespace) if r.state == "Pending"]) >= 2,
        15,
        "beat fired the newer entry",
    )


def test_beat_cut_off_from_redis_for_30s_keeps_running_and_never_fires_a_slot_twice(
    beats: Beats, redis_url: str
) -> None:
    """Beat A reaches Redis through a proxy cut for 30 s; beat B, direct, stands by."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    proxy = Partition((host, int(port)))
    try:
        direct, beats.redis_url = beats.redis_url, f"redis://127.0.0.1:{proxy.port}/0"
        first = beats.start("beat-a")
        beats.redis_url = direct
        wait_for(lambda: beats.holder_ready(first), 30, "beat-a took the lock")
        second = beats.start("beat-b")
        namespace = f"n{uuid.uuid4().hex[:6]}"
        beats.store.upsert_if_changed(
            [entry(namespace, anchor=now().replace(microsecond=0), every=1)], now()
        )
        wait_for(lambda: len(beats.records(namespace)) >= 3, 10, "beat-a fires")

        proxy.cut()
        wait_for(lambda: beats.holder_ready(second), 30, "beat-b took over")
        time.sleep(max(0.0, 30 - 8))  # the rest of a 30 s outage
        proxy.heal()
        healed = now()
        wait_for(
            lambda: "waiting to take it again" in first.log_path.read_text(),
            30,
            "beat-a noticed it lost the lock",
        )
        assert first.running(), "beat-a exited instead of waiting"
        wait_for(
            lambda: any(
                r.time > healed + dt.timedelta(seconds=3) for r in beats.records(namespace)
            ),
            10,
            "slots fire after the outage",
        )
        # B goes: A, still running, takes over and resumes firing.
        beats.supervisor.stop(second, grace=10)
        gone = now()
        wait_for(
            lambda: "Acquired lock" in first.log_path.read_text().split("waiting to take it")[-1],
            30,
            "beat-a took the lock again",
        )
        wait_for(
            lambda: any(r.time > gone + dt.timedelta(seconds=2) for r in beats.records(namespace)),
            20,
            "beat-a fires again",
        )
        pending = [r.run_id for r in beats.records(namespace) if r.state == "Pending"]
        assert len(pending) == len(set(pending)), "a slot was published twice"
    finally:
        proxy.close()


def test_an_entry_beat_cannot_plan_is_reported_and_every_other_entry_fires(
    beats: Beats,
) -> None:
    beat = beats.start()
    wait_for(lambda: beats.holder_ready(beat), 30, "beat took its lock")
    good, bad = f"g{uuid.uuid4().hex[:6]}", f"b{uuid.uuid4().hex[:6]}"
    anchor = now().replace(microsecond=0)
    broken = entry(bad, anchor=anchor, every=1)
    beats.store.upsert_if_changed([entry(good, anchor=anchor, every=1), broken], now())
    # A definition beat cannot plan (say, from a newer operator): a cron it refuses.
    raw = json.loads(broken.model_dump_json())
    raw["schedule"] = {"kind": "cron", "cron": "61 * * * *"}
    beats.client.hset(keys.redbeat_key(bad, "t", beats.prefix), "definition", json.dumps(raw))

    def noticed() -> list[contract.ObjectNotice]:
        entries = beats.client.xrange(keys.RUN_RECORDS_STREAM)
        found = [
            contract.ObjectNotice.model_validate_json(fields[b"notice"])
            for _id, fields in entries  # type: ignore[union-attr]
            if b"notice" in fields
        ]
        return [n for n in found if n.namespace == bad]

    (notice,) = wait_for(noticed, 15, "beat reported the entry")
    assert notice.reason == "EntryPlanningFailed"
    assert "61" in notice.message
    wait_for(lambda: len(beats.records(good)) >= 3, 10, "the other entry keeps firing")
    assert beat.running()
    assert [r for r in beats.records(bad) if r.state == "Pending"] == []
