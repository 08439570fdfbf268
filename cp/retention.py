"""Delete what is older than its retention period: finished runs with their attempts, daemon
events and run state changes, log records, delivered or given-up alert notices and their attempts.
Config versions are kept: they are the audit trail.

Rows go in chunks of the oldest ids, each chunk its own short transaction, so a large purge never
holds a lock (SQLite's one write lock above all) long enough to stall heartbeats or run events."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, or_
from sqlmodel import Session, SQLModel, col, select

from cp.alerts.outbox import AlertDelivery, AlertNotice
from cp.models import FINISHED_RUN_STATES, DaemonEvent, LogRecord, Run, RunAttempt, RunStateChange
from cp.settings import Settings

Sessions = Callable[[], AbstractContextManager[Session]]  # each one commits when its block ends


@dataclass(frozen=True)
class RetentionPolicy:
    run_days: float  # finished runs and their attempts
    event_days: float  # daemon events, run state changes, finished alert notices and their attempts
    log_days: float  # log records
    chunk: int = 10_000  # rows deleted per transaction

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            run_days=settings.retention_days,
            event_days=settings.event_retention_days,
            log_days=settings.log_retention_days,
            chunk=settings.retention_chunk,
        )


def purge_old_records(sessions: Sessions, *, now: datetime, policy: RetentionPolicy) -> dict[str, int]:
    """Rows deleted per table. Active runs are never deleted, however old."""
    run_cutoff = now - timedelta(days=policy.run_days)
    event_cutoff = now - timedelta(days=policy.event_days)
    log_cutoff = now - timedelta(days=policy.log_days)
    old_runs = (col(Run.state).in_(FINISHED_RUN_STATES), col(Run.finished_at) < run_cutoff)
    deleted = {"run_attempts": 0, "runs": 0}
    while True:
        with sessions() as session:
            attempts, runs = _delete_old_runs(session, *old_runs, chunk=policy.chunk)
        deleted["run_attempts"] += attempts
        deleted["runs"] += runs
        if runs < policy.chunk:
            break
    deleted["run_state_changes"] = _delete_in_chunks(
        sessions, RunStateChange, col(RunStateChange.at) < event_cutoff, chunk=policy.chunk
    )
    deleted["daemon_events"] = _delete_in_chunks(
        sessions, DaemonEvent, col(DaemonEvent.at) < event_cutoff, chunk=policy.chunk
    )
    deleted["log_records"] = _delete_in_chunks(
        sessions, LogRecord, col(LogRecord.ts) < log_cutoff, chunk=policy.chunk
    )
    deleted["alert_deliveries"] = _delete_in_chunks(
        sessions, AlertDelivery, col(AlertDelivery.at) < event_cutoff, chunk=policy.chunk
    )
    # a notice still to be sent stays, however old: it is given up by delivery, not by retention
    finished = or_(col(AlertNotice.delivered_at).is_not(None), col(AlertNotice.given_up_at).is_not(None))
    deleted["alert_notices"] = _delete_in_chunks(
        sessions, AlertNotice, finished & (col(AlertNotice.created_at) < event_cutoff), chunk=policy.chunk
    )
    return deleted


def _delete_old_runs(session: Session, *where: ColumnElement[bool], chunk: int) -> tuple[int, int]:
    """The oldest ``chunk`` matching runs and their attempts, in one transaction."""
    oldest = select(Run.id).where(*where).order_by(col(Run.id)).limit(chunk)
    their_keys = select(Run.run_key).where(col(Run.id).in_(oldest))
    attempts = session.exec(delete(RunAttempt).where(col(RunAttempt.run_key).in_(their_keys))).rowcount
    runs = session.exec(delete(Run).where(col(Run.id).in_(oldest))).rowcount
    return attempts, runs


def _delete_in_chunks(sessions: Sessions, table: type[SQLModel], where: Any, *, chunk: int) -> int:
    """Delete the matching rows of ``table``, the ``chunk`` lowest ids per transaction."""
    ids: Any = table.id  # type: ignore[attr-defined]  # every table here has an integer id
    total = 0
    while True:
        oldest = select(ids).where(where).order_by(ids).limit(chunk)
        with sessions() as session:
            count = session.exec(delete(table).where(col(ids).in_(oldest))).rowcount
        total += count
        if count < chunk:
            return total
