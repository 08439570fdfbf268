"""A daemon talks to the control plane through its outbox: a broker that is down fails no job,
and a process that restarts lets its running jobs finish and keeps their last events."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import fakeredis

from cp.celery_app import make_celery
from cp.models import utcnow
from cp.protocol import CP_RUN_EVENT, HEARTBEAT_KEY_TTL_SECONDS, RunEvent, heartbeat_key
from cp.settings import Settings
from workers.heartbeat_key import HeartbeatWriter
from workers.runtime import DaemonRuntime

NOBODY_LISTENS = "redis://127.0.0.1:1/0"  # connection refused at once: a broker that is down


def runtime(tmp_path: Path) -> DaemonRuntime:
    settings = Settings(
        home=tmp_path, broker_url=NOBODY_LISTENS, outbox_close_timeout=0.2, heartbeat_interval=0.05
    )
    app = make_celery(settings, name="daemon-edge-1")
    return DaemonRuntime(settings, app, name="edge-1", labels={})


def event(state: str) -> RunEvent:
    return RunEvent(run_key="r1", daemon="edge-1", state=state, at=utcnow())  # type: ignore[arg-type]


def test_a_run_event_sent_while_the_broker_is_down_neither_raises_nor_is_lost(tmp_path: Path) -> None:
    daemon = runtime(tmp_path)
    daemon.outbox.start()
    daemon.send(CP_RUN_EVENT, event("progress"), argsrepr="run=r1 state=progress")
    daemon.send(CP_RUN_EVENT, event("succeeded"), argsrepr="run=r1 state=succeeded")
    daemon.finish(wait_for_jobs=False)
    spool = tmp_path / "daemons" / "edge-1" / "outbox.jsonl"
    kept = [json.loads(line) for line in spool.read_text(encoding="utf-8").splitlines()]
    assert [(m["task"], m["payload"]["state"]) for m in kept] == [
        (CP_RUN_EVENT, "progress"),
        (CP_RUN_EVENT, "succeeded"),
    ]


def test_finishing_for_a_restart_waits_until_the_running_jobs_are_done(tmp_path: Path) -> None:
    daemon = runtime(tmp_path)
    broker = fakeredis.FakeRedis()
    daemon.heartbeats = HeartbeatWriter(lambda: (None, broker))
    assert daemon.claim("r1")
    finished = threading.Event()
    waiter = threading.Thread(
        target=lambda: (daemon.finish(wait_for_jobs=True, poll=0.01), finished.set()), daemon=True
    )
    waiter.start()
    assert not finished.wait(0.5)  # the job still runs: no exec yet
    # and the control plane keeps hearing from the daemon meanwhile, so the run is not taken for lost
    beat = json.loads(broker.get(heartbeat_key("edge-1")))["beat"]
    assert beat["running_runs"] == ["r1"]
    assert 0 < broker.ttl(heartbeat_key("edge-1")) <= HEARTBEAT_KEY_TTL_SECONDS
    daemon.release("r1")
    assert finished.wait(10)
