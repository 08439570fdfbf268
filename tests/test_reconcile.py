"""Reconciliation from heartbeats with real processes: a run the control plane believes running that
its daemon's heartbeats have not listed for the grace is lost, and a job a daemon runs for a run
that has ended is stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlmodel import Session

from cp.db import make_engine
from cp.models import Run, RunState, RunTrigger, utcnow
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for
from tests.test_scheduling_faults import PIPELINE, config, make_source, run_by_key, start_daemon

pytestmark = pytest.mark.integration


def change(database_url: str, edit: Callable[[Session], None]) -> None:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            edit(session)
            session.commit()
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_heartbeats_lose_a_run_the_daemon_has_not_run_for_the_grace_and_stop_a_job_whose_run_has_ended(
    kind: str, make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url(kind)
    stack = make_stack(database_url, reconcile_grace="2")
    make_source(stack.home / "shop.db", rows=100_000)
    stack.start("worker", "worker")
    start_daemon(stack)
    slow = PIPELINE.format(
        name="slow", table="items", extra="    batch_size: 20\n    retries: {max_attempts: 1}"
    )
    stack.cli("apply", "-f", str(config(stack, slow)), check=True)

    # the control plane believes edge-f runs a job that it started a minute ago and never heard of
    def believed_running(session: Session) -> None:
        started = utcnow() - timedelta(seconds=60)
        session.add(
            Run(run_key="slow@manual-ghost", pipeline="slow", trigger=RunTrigger.MANUAL, daemon="edge-f",
                state=RunState.RUNNING, task_id="slow@manual-ghost", created_at=started, started_at=started)
        )  # fmt: skip

    change(database_url, believed_running)
    ghost = wait_for(
        lambda: (r := run_by_key(database_url, "slow@manual-ghost")) and r.state.finished and r,
        timeout=60, what="the unlisted run to be lost", stack=stack,
    )  # fmt: skip
    assert ghost.state is RunState.LOST
    assert ghost.error == "lost: daemon edge-f no longer reported the job while the run was going"
    # noted by the first heartbeat that missed it, lost by one at least the grace (2 s) later
    assert ghost.unlisted_since is not None and ghost.finished_at is not None
    assert ghost.finished_at - ghost.unlisted_since >= timedelta(seconds=2)

    # a real job goes on at the daemon after the control plane ended its run (timed out, say)
    key = json.loads(stack.cli("run", "slow", "--json", check=True).stdout)["run_key"]
    wait_for(
        lambda: (r := run_by_key(database_url, key)) and r.state is RunState.RUNNING,
        timeout=60, what="the slow run to start", stack=stack,
    )  # fmt: skip

    def ended(session: Session) -> None:
        run = session.get(Run, run_by_key(database_url, key).id)  # type: ignore[union-attr]
        assert run is not None
        run.state, run.finished_at, run.error = RunState.TIMED_OUT, utcnow(), "timed out (test)"
        session.add(run)

    change(database_url, ended)
    log = stack.home / "daemon.log"
    wait_for(
        lambda: f"run {key} cancelled" in log.read_text(errors="replace"),
        timeout=60, what="the daemon to stop the job", stack=stack,
    )  # fmt: skip
    run = run_by_key(database_url, key)
    assert run is not None and run.state is RunState.TIMED_OUT and run.rows_written < 100_000
