"""Write a daemon's batch of log records in one bulk INSERT that skips records already stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from cp.models import DaemonEvent, LogRecord
from cp.protocol import LogBatch


def record_rows(batch: LogBatch) -> list[dict[str, Any]]:
    """The LogRecord rows of ``batch``, all for its sender."""
    return [
        {
            "daemon": batch.name,
            "seq": r.seq,
            "ts": r.ts,
            "level": r.level,
            "logger": r.logger,
            "pipeline": r.pipeline,
            "run_key": r.run_key,
            "attempt": r.attempt,
            "message": r.message,
        }
        for r in batch.records
    ]


def insert_ignoring_duplicates(session: Session) -> Insert:
    """``INSERT INTO logrecord ... ON CONFLICT (daemon, seq) DO NOTHING`` for this session's database."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(LogRecord).on_conflict_do_nothing(index_elements=["daemon", "seq"])
    if dialect == "sqlite":
        return sqlite.insert(LogRecord).on_conflict_do_nothing(index_elements=["daemon", "seq"])
    raise NotImplementedError(f"log records on {dialect} are not supported (SQLite or PostgreSQL)")


def store_batch(session: Session, batch: LogBatch) -> int:
    """Store ``batch``; returns how many of its records were new (a redelivery adds none)."""
    rows = record_rows(batch)
    result = session.connection().execute(insert_ignoring_duplicates(session), rows)
    return int(result.rowcount) if result.rowcount is not None and result.rowcount >= 0 else len(rows)


LOGS_DROPPED = "logs_dropped"  # the DaemonEvent kind of a report of records a daemon dropped


def record_dropped(session: Session, batch: LogBatch, *, now: datetime) -> None:
    """A DaemonEvent for the records ``batch``'s sender dropped from its full spool (once, however
    often the batch is delivered)."""
    reason = (
        f"{batch.dropped} log record(s) dropped by the daemon's full spool (oldest first) "
        f"before seq {batch.records[0].seq}"
    )
    seen = select(DaemonEvent.id).where(
        DaemonEvent.daemon == batch.name, DaemonEvent.kind == LOGS_DROPPED, DaemonEvent.reason == reason
    )
    if session.exec(seen).first() is None:
        session.add(DaemonEvent(at=now, daemon=batch.name, kind=LOGS_DROPPED, reason=reason))
