"""Write a daemon's batch of log records in one bulk INSERT that skips records already stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from cp.models import DaemonEvent
from cp.protocol import LOG_ROW_FIELDS, LogBatch

COLUMNS = ("daemon", *LOG_ROW_FIELDS)
# the ORM's per-value type processing cost more than the insert itself: the statement goes to the
# driver as it is, with the time in the form LogRecord.ts stores (UTCDateTime: naive UTC text on
# SQLite, timestamptz on PostgreSQL), as one executemany (psycopg pipelines it; one statement
# with every row in it measured half as fast)
INSERT_IGNORING_DUPLICATES = {
    dialect: (
        f"INSERT INTO logrecord ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))}) "
        "ON CONFLICT (daemon, seq) DO NOTHING"
    )
    for dialect, mark in (("sqlite", "?"), ("postgresql", "%s"))
}


_ZERO = timedelta(0)


def record_rows(batch: LogBatch, *, dialect: str) -> list[tuple[Any, ...]]:
    """The LogRecord rows of ``batch``, all for its sender, as the driver takes them."""
    if dialect == "sqlite":

        def when(ts: datetime) -> Any:
            utc = ts if ts.utcoffset() == _ZERO else ts.astimezone(UTC)  # daemons send UTC
            return utc.replace(tzinfo=None).isoformat(" ", "microseconds")
    else:

        def when(ts: datetime) -> Any:
            return ts.astimezone(UTC)

    name = batch.name
    # the wire row is already in column order (cp/protocol.py LOG_ROW_FIELDS): only ts changes form
    return [(name, seq, when(ts), *rest) for seq, ts, *rest in batch.rows]


def store_batch(session: Session, batch: LogBatch) -> int:
    """Store ``batch`` in one bulk INSERT that skips records stored before (a redelivery adds
    none); returns how many were new, where the driver tells."""
    dialect = session.get_bind().dialect.name
    statement = INSERT_IGNORING_DUPLICATES.get(dialect)
    if statement is None:
        raise NotImplementedError(f"log records on {dialect} are not supported (SQLite or PostgreSQL)")
    rows = record_rows(batch, dialect=dialect)
    stored = session.connection().exec_driver_sql(statement, rows).rowcount
    return int(stored) if stored is not None and stored >= 0 else len(rows)


LOGS_DROPPED = "logs_dropped"  # the DaemonEvent kind of a report of records a daemon dropped


def record_dropped(session: Session, batch: LogBatch, *, now: datetime) -> None:
    """A DaemonEvent for the records ``batch``'s sender dropped from its full spool (once, however
    often the batch is delivered)."""
    reason = (
        f"{batch.dropped} log record(s) dropped by the daemon's full spool (oldest first) "
        f"before seq {batch.first_seq}"
    )
    seen = select(DaemonEvent.id).where(
        DaemonEvent.daemon == batch.name, DaemonEvent.kind == LOGS_DROPPED, DaemonEvent.reason == reason
    )
    if session.exec(seen).first() is None:
        session.add(DaemonEvent(at=now, daemon=batch.name, kind=LOGS_DROPPED, reason=reason))
