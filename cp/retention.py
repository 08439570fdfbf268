"""Delete what is older than the retention period: finished runs and their attempts, daemon
events and log records. Config versions are kept: they are the audit trail."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import Session, col, select

from cp.models import FINISHED_RUN_STATES, DaemonEvent, LogRecord, Run, RunAttempt


def purge_old_records(session: Session, *, now: datetime, keep_days: float) -> dict[str, int]:
    """Rows deleted per table. Active runs are never deleted, however old."""
    cutoff = now - timedelta(days=keep_days)
    old_runs = select(Run.run_key).where(
        col(Run.state).in_(FINISHED_RUN_STATES), col(Run.finished_at) < cutoff
    )
    deleted = {
        "run_attempts": session.exec(
            delete(RunAttempt).where(col(RunAttempt.run_key).in_(old_runs))
        ).rowcount,
        "runs": session.exec(
            delete(Run).where(col(Run.state).in_(FINISHED_RUN_STATES), col(Run.finished_at) < cutoff)
        ).rowcount,
        "daemon_events": session.exec(delete(DaemonEvent).where(col(DaemonEvent.at) < cutoff)).rowcount,
        "log_records": session.exec(delete(LogRecord).where(col(LogRecord.ts) < cutoff)).rowcount,
    }
    return deleted
