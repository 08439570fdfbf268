"""Health and failover with real processes: a killed daemon's run is retried on another daemon
with the same labels, a stopped daemon goes degraded then offline and its runs move, a daemon
restarted under the same name picks up its config and its queue."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from cp.db import make_engine
from cp.models import DaemonEvent, Run, RunState
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for
from tests.test_effectively_once import committed_state, digest
from tests.test_effectively_once import make_source as make_events_source

pytestmark = pytest.mark.integration

FAST_HEALTH = {
    "heartbeat_interval": "1",
    "offline_after_missed": "6",
    "health_check_interval": "1",
    "probe_interval": "1",
    "probe_timeout": "2",
}

CONFIG = """
daemons:
  - {{name: edge-a, labels: {{site: berlin}}}}
  - {{name: edge-b, labels: {{site: berlin}}}}
connectors:
  - {{name: shop, kind: sqlite, path: {home}/shop.db}}
  - {{name: warehouse, kind: sqlite, path: {home}/warehouse.db}}
pipelines:
  - name: events
    source: {{connector: shop, table: events}}
    destination: {{connector: warehouse, table: events}}
    labels: {{site: berlin}}
    mode: append
    batch_size: {batch}
    overlap: allow
    max_active_runs: 10
  - name: pinned
    source: {{connector: shop, table: events}}
    destination: {{connector: warehouse, table: pinned_events}}
    daemon: edge-a
    mode: replace
"""


def runs(database_url: str, pipeline: str) -> list[Run]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            return list(session.exec(select(Run).where(Run.pipeline == pipeline).order_by(col(Run.id))))
    finally:
        engine.dispose()


def transitions(database_url: str, daemon: str) -> list[str]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            events = session.exec(
                select(DaemonEvent)
                .where(DaemonEvent.daemon == daemon, DaemonEvent.kind == "status")
                .order_by(col(DaemonEvent.id))
            )
            return [str(e.to_status) for e in events]
    finally:
        engine.dispose()


def start(stack: Stack, *names: str) -> None:
    stack.start("worker", "worker")
    stack.start("beat", "beat")
    for name in names:
        stack.start(name, "daemon", "--name", name, "--labels", "site=berlin")
    stack.wait_heard_from(*names)  # undeclared until the test applies its configuration


def setup(make_stack, make_database_url, batch: int = 500, **settings: str) -> tuple[Stack, str, Path]:  # type: ignore[no-untyped-def]
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url, **{**FAST_HEALTH, **settings})
    make_events_source(stack.home / "shop.db")
    config = stack.write_config(CONFIG.format(home=stack.home, batch=batch))
    return stack, database_url, config


def test_a_killed_daemons_run_is_retried_on_another_daemon_and_the_data_lands_exactly_once(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
) -> None:
    stack, database_url, config = setup(make_stack, make_database_url)
    start(stack, "edge-a", "edge-b")
    stack.cli("apply", "-f", str(config), check=True)
    stack.wait_online("edge-a", "edge-b")
    stack.cli("run", "events", check=True)
    [run] = runs(database_url, "events")
    victim = run.daemon
    assert victim in ("edge-a", "edge-b")
    destination = stack.home / "warehouse.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = committed_state(destination)
        if state and int(state["rows_loaded"]) > 0 and not state["complete"]:  # type: ignore[call-overload]
            break
        time.sleep(0.005)
    stack.procs[victim].send_signal(signal.SIGKILL)

    survivor = "edge-b" if victim == "edge-a" else "edge-a"
    [done] = wait_for(
        lambda: (rs := runs(database_url, "events")) and rs[0].state is RunState.SUCCEEDED and rs,
        timeout=120, what="the run to succeed on the other daemon", stack=stack,
    )  # fmt: skip
    assert (done.daemon, done.attempt) == (survivor, 2)
    assert "offline" in transitions(database_url, victim)
    assert digest(destination) == digest(stack.home / "shop.db")


def test_a_stopped_daemon_goes_degraded_then_offline_and_its_queued_runs_move(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
) -> None:
    # degraded after 6 s, offline after 15 s: time for the four triggers (Python processes that may
    # take seconds each on a loaded machine) to place runs on the stopped daemon while it looks online
    stack, database_url, _ = setup(
        make_stack, make_database_url, probe_timeout="6", offline_after_missed="15"
    )
    # four label-placed pipelines into separate tables, so the runs never wait on each other
    pipelines = "".join(
        f"  - {{name: copy{n}, source: {{connector: shop, table: events}},"
        f" destination: {{connector: warehouse, table: copy{n}}}, labels: {{site: berlin}}}}\n"
        for n in range(4)
    )
    config = stack.write_config(
        CONFIG.split("pipelines:")[0].format(home=stack.home) + "pipelines:\n" + pipelines
    )
    start(stack, "edge-a", "edge-b")
    stack.cli("apply", "-f", str(config), check=True)
    stack.wait_online("edge-a", "edge-b")
    stopped = stack.procs["edge-a"]
    stopped.send_signal(signal.SIGSTOP)  # alive, but consuming nothing
    try:
        triggers = [
            subprocess.Popen(stack.cli_argv("run", f"copy{n}"), env=stack.env, stdout=subprocess.DEVNULL)
            for n in range(4)
        ]
        for proc in triggers:
            proc.wait(timeout=60)

        def all_done() -> list[Run]:
            rs = [r for n in range(4) for r in runs(database_url, f"copy{n}")]
            return rs if len(rs) == 4 and all(r.state is RunState.SUCCEEDED for r in rs) else []

        done = wait_for(all_done, timeout=120, what="all four runs to succeed", stack=stack)
        assert {r.daemon for r in done} == {"edge-b"}
        history = transitions(database_url, "edge-a")
        assert "degraded" in history and "offline" in history
        assert history.index("degraded") < history.index("offline")
        assert any(r.attempt > 1 for r in done), "no run was placed on the stopped daemon and moved"
    finally:
        stopped.send_signal(signal.SIGCONT)


def test_a_daemon_restarted_under_the_same_name_picks_up_its_config_and_its_queue(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
) -> None:
    # slow offline detection: the job must reach the queue of a daemon not yet seen as offline
    stack, database_url, config = setup(make_stack, make_database_url, offline_after_missed="60")
    start(stack, "edge-a")
    stack.cli("apply", "-f", str(config), check=True)
    stack.wait_online("edge-a")
    stack.stop("edge-a")  # a clean stop; the control plane has not noticed yet
    stack.cli("run", "pinned", check=True)  # its job waits in edge-a's queue
    # the job (and the canary probes sent meanwhile) pile up in the stopped daemon's queue
    wait_for(lambda: (stack.daemon("edge-a") or {}).get("queue_depth", 0) >= 1, timeout=30, what="a backlog")
    assert runs(database_url, "pinned")[0].state is RunState.QUEUED
    stack.start("edge-a", "daemon", "--name", "edge-a", "--labels", "site=berlin")
    [run] = wait_for(
        lambda: (rs := runs(database_url, "pinned")) and rs[0].state.finished and rs,
        timeout=60, what="the queued run", stack=stack,
    )  # fmt: skip
    assert (run.state, run.daemon) == (RunState.SUCCEEDED, "edge-a")
    daemon = stack.daemon("edge-a")
    assert daemon is not None and daemon["status"] == "online" and daemon["applied_config_version"] == 1
