"""Retention deletes old finished history and never an active run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

from cp.models import DaemonEvent, Run, RunAttempt, RunState, RunTrigger
from cp.retention import purge_old_records

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def add_run(session: Session, key: str, state: RunState, finished_days_ago: float | None) -> None:
    finished = NOW - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
    session.add(Run(run_key=key, pipeline="p", trigger=RunTrigger.MANUAL, state=state,
                    created_at=NOW - timedelta(days=60), finished_at=finished))  # fmt: skip
    session.add(RunAttempt(run_key=key, attempt=1, state=state))


def test_old_finished_runs_events_and_attempts_go_and_everything_else_stays(session: Session) -> None:
    add_run(session, "old-done", RunState.SUCCEEDED, finished_days_ago=40)
    add_run(session, "recent-done", RunState.FAILED, finished_days_ago=5)
    add_run(session, "old-but-running", RunState.RUNNING, finished_days_ago=None)
    session.add(DaemonEvent(at=NOW - timedelta(days=31), daemon="d", kind="status"))
    session.add(DaemonEvent(at=NOW - timedelta(days=1), daemon="d", kind="status"))
    session.commit()

    deleted = purge_old_records(session, now=NOW, keep_days=30)
    session.commit()

    assert deleted == {"run_attempts": 1, "runs": 1, "daemon_events": 1, "log_records": 0}
    assert sorted(r.run_key for r in session.exec(select(Run))) == ["old-but-running", "recent-done"]
    assert sorted(a.run_key for a in session.exec(select(RunAttempt))) == ["old-but-running", "recent-done"]
    assert len(session.exec(select(DaemonEvent)).all()) == 1
