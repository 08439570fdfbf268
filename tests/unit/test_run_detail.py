"""A run's story: every state change recorded where the control plane makes it, every attempt kept
whole, and the listing's rows and times over all attempts."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cp.failover import fail_over
from cp.models import Daemon, DaemonStatus, LogRecord, Pipeline, Run, RunAttempt, RunState, RunTrigger
from cp.protocol import RunEvent
from cp.run_detail import find_run, run_detail
from cp.run_totals import run_totals
from cp.runs import create_run, mark_unpublished, queue_run, record_run_event, request_cancel
from cp.scheduler import dispatch_ready_runs, fire_due_runs
from cp.views import run_rows

T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(engine_on_both: Engine) -> Engine:
    """Every test here on SQLite and on PostgreSQL (the unit suite's own fixtures build on this)."""
    return engine_on_both


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def apply(session: Session, run: Run, state: str, when: float, **fields: Any) -> Run:
    """The daemon's report of ``state`` for the run's current attempt, applied and committed."""
    assert run.daemon is not None
    event = RunEvent(
        run_key=run.run_key, daemon=run.daemon, state=state, at=at(when), attempt=run.attempt, **fields
    )  # type: ignore[arg-type]
    assert record_run_event(session, event, now=at(when), rng=random.Random(1))
    session.commit()
    return reload(session, run.run_key)


def reload(session: Session, run_key: str) -> Run:
    session.expire_all()
    return session.exec(select(Run).where(Run.run_key == run_key)).one()


def retried_run(session: Session, pipeline: Pipeline) -> Run:
    """A manual run whose first attempt fails after reading 50 rows and whose retry succeeds."""
    new = create_run(session, pipeline, trigger=RunTrigger.MANUAL, now=at(0))
    assert new is not None
    assert queue_run(session, new, pipeline, now=at(0), expires=60) is not None
    session.commit()
    run = apply(session, reload(session, new.run_key), "started", 1)
    run = apply(session, run, "progress", 2, rows_read=30, rows_written=20)
    run = apply(session, run, "failed", 3, rows_read=50, rows_written=40, error="boom", retryable=True)
    assert run.state is RunState.SCHEDULED and run.attempt == 2
    assert dispatch_ready_runs(session, now=at(30), expires=60)  # after the backoff: queued in bulk
    session.commit()
    run = apply(session, reload(session, run.run_key), "started", 31)
    return apply(session, run, "succeeded", 41, rows_read=60, rows_written=60)


def test_a_retried_run_shows_both_attempts_its_state_changes_in_order_and_summed_rows(
    session: Session, add_daemon: Callable[..., Daemon], add_pipeline: Callable[..., Pipeline]
) -> None:
    add_daemon("edge-1")
    run = retried_run(
        session, add_pipeline("orders", daemon="edge-1", retry_backoff=10, retry_backoff_max=10)
    )

    detail = run_detail(session, run)

    first, second = detail["attempts"]
    assert (first["attempt"], first["daemon"], first["state"], first["error"]) == (
        1,
        "edge-1",
        "failed",
        "boom",
    )
    assert (first["rows_read"], first["rows_written"]) == (50, 40)
    assert (first["started_at"], first["finished_at"]) == (at(1).isoformat(), at(3).isoformat())
    assert (second["attempt"], second["daemon"], second["state"], second["error"]) == (
        2,
        "edge-1",
        "succeeded",
        None,
    )
    assert (second["rows_read"], second["rows_written"], second["duration_s"]) == (60, 60, 10.0)
    changes = [(c["attempt"], c["from_state"], c["to_state"]) for c in detail["state_changes"]]
    assert changes == [
        (1, None, "scheduled"),
        (1, "scheduled", "queued"),
        (1, "queued", "running"),
        (1, "running", "retrying"),
        (2, "scheduled", "queued"),
        (2, "queued", "running"),
        (2, "running", "succeeded"),
    ]
    retrying = detail["state_changes"][3]
    assert retrying["daemon"] == "edge-1" and retrying["reason"].startswith(
        "attempt 1 failed: boom; attempt 2 in "
    )
    [listed] = run_rows(session)
    assert detail["run"] == listed
    assert (listed["rows_read"], listed["rows_written"]) == (110, 100)
    assert listed["started_at"] == at(1).isoformat()
    assert (listed["duration_s"], listed["running_s"]) == (40.0, 12.0)  # 1 s to 41 s; 2 s + 10 s running


def test_totals_of_a_run_still_going_count_the_live_attempt_and_no_duration() -> None:
    run = Run(run_key="k", pipeline="p", created_at=T0, attempt=2, state=RunState.RUNNING,
              started_at=at(20), rows_read=7, rows_written=5)  # fmt: skip
    attempts = [
        RunAttempt(
            run_key="k",
            attempt=1,
            state=RunState.LOST,
            started_at=at(1),
            finished_at=at(4),
            rows_read=10,
            rows_written=10,
        ),  # fmt: skip
        RunAttempt(run_key="k", attempt=2, state=RunState.RUNNING, started_at=at(20)),
    ]
    totals = run_totals(run, attempts)
    assert (totals.rows_read, totals.rows_written) == (17, 15)
    assert (totals.first_started_at, totals.duration_s, totals.running_s) == (at(1), None, 3.0)


def test_scheduled_fires_and_moves_off_an_offline_daemon_are_recorded_in_bulk(
    session: Session, add_daemon: Callable[..., Daemon], add_pipeline: Callable[..., Pipeline]
) -> None:
    add_daemon("edge-1")
    add_daemon("edge-2")
    add_pipeline("orders", labels={}, schedule="* * * * *", schedule_since=at(-120))
    assert fire_due_runs(session, now=at(1)) == 1
    assert len(dispatch_ready_runs(session, now=at(1), expires=60)) == 1
    session.commit()
    run = session.exec(select(Run)).one()
    gone = session.exec(select(Daemon).where(Daemon.name == run.daemon)).one()
    gone.status, gone.status_since = DaemonStatus.OFFLINE, at(1)
    session.add(gone)
    fail_over(session, now=at(2), lost_after=0, rng=random.Random(1))
    session.commit()

    changes = run_detail(session, reload(session, run.run_key))["state_changes"]
    assert [(c["attempt"], c["to_state"], c["daemon"]) for c in changes] == [
        (1, "scheduled", None),
        (1, "queued", gone.name),
        (1, "moved", gone.name),
    ]
    assert changes[0]["reason"] == "scheduled fire"
    assert changes[2]["reason"] == f"daemon {gone.name} went offline"


def test_a_cancelled_and_an_unpublished_run_end_with_their_attempt_closed_and_recorded(
    session: Session, add_daemon: Callable[..., Daemon], add_pipeline: Callable[..., Pipeline]
) -> None:
    add_daemon("edge-1")
    pipeline = add_pipeline("orders", daemon="edge-1", overlap="allow", max_active_runs=2)
    runs = [create_run(session, pipeline, trigger=RunTrigger.MANUAL, now=at(0)) for _ in range(2)]
    for run in runs:
        assert run is not None and queue_run(session, run, pipeline, now=at(0), expires=60) is not None
    session.commit()
    cancelled, unpublished = (r.run_key for r in runs if r is not None)
    request_cancel(session, cancelled, now=at(1))
    mark_unpublished(session, unpublished, error="could not publish the job: broker down", now=at(1))
    session.commit()

    for key, state, error in [
        (cancelled, "cancelled", "cancelled before it started"),
        (unpublished, "failed", "could not publish the job: broker down"),
    ]:
        detail = run_detail(session, reload(session, key))
        [attempt] = detail["attempts"]
        assert (attempt["state"], attempt["finished_at"], attempt["error"]) == (
            state,
            at(1).isoformat(),
            error,
        )
        last = detail["state_changes"][-1]
        assert (last["from_state"], last["to_state"], last["reason"]) == ("queued", state, error)


def test_log_lines_are_the_newest_ones_in_time_then_sequence_order(session: Session) -> None:
    session.add(Run(run_key="orders@1", pipeline="orders", created_at=T0))
    for seq, second in [(3, 5), (1, 1), (2, 5), (4, 9)]:  # two at the same instant: seq orders them
        session.add(LogRecord(daemon="edge-1", seq=seq, ts=at(second), level="INFO", logger="job",
                              run_key="orders@1", message=f"line {seq}"))  # fmt: skip
    session.add(LogRecord(daemon="edge-1", seq=9, ts=at(2), level="INFO", logger="job", run_key="other",
                          message="another run's"))  # fmt: skip
    session.commit()
    run = reload(session, "orders@1")

    every = run_detail(session, run)
    last_two = run_detail(session, run, last_log_lines=2)
    none = run_detail(session, run, last_log_lines=0)

    assert [line["message"] for line in every["log_lines"]] == ["line 1", "line 2", "line 3", "line 4"]
    assert [line["message"] for line in last_two["log_lines"]] == ["line 3", "line 4"]
    assert (last_two["log_lines_total"], none["log_lines"], none["log_lines_total"]) == (4, [], 4)


def test_a_run_is_found_by_its_key_its_id_or_an_attempts_task_id(session: Session) -> None:
    session.add(Run(run_key="orders@manual-1", pipeline="orders", created_at=T0))
    session.commit()
    run = reload(session, "orders@manual-1")
    for ref in ["orders@manual-1", str(run.id), "orders@manual-1#2"]:
        found = find_run(session, ref)
        assert found is not None and found.run_key == "orders@manual-1", ref
    for ref in ["orders@manual-2", "999", "9" * 40, "#"]:
        assert find_run(session, ref) is None, ref
