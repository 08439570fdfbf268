"""Log batches stored the same way on SQLite and PostgreSQL: one bulk insert that skips records
already there, times that read back exactly and compare right in the queries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, col, select

from cp.db import create_schema, make_engine
from cp.logs.ingest import store_batch
from cp.logs.query import LogFilter, newest
from cp.models import LogRecord
from cp.protocol import LogBatch, log_row, parse
from cp.settings import normalize_database_url

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


def batch(seqs: range) -> LogBatch:
    records = [
        {
            "seq": s,
            "ts": (T0 + timedelta(seconds=s)).astimezone(UTC).isoformat(),
            "level": "INFO",
            "logger": "workers.jobs",
            "pipeline": "orders",
            "run_key": "orders@1",
            "attempt": 1,
            "message": f"line {s} ünïcode 'quoted' %s ?",
        }
        for s in seqs
    ]
    return parse(LogBatch, {"v": 1, "name": "edge-1", "rows": [log_row(r) for r in records]})


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_batch_is_stored_once_with_its_times_exact(
    kind: str, make_database_url: Callable[[str], str]
) -> None:
    engine = make_engine(normalize_database_url(make_database_url(kind)))
    create_schema(engine)
    try:
        with Session(engine) as session:
            assert store_batch(session, batch(range(1, 501))) == 500
            assert store_batch(session, batch(range(400, 601))) == 100
            session.commit()
        with Session(engine) as session:
            rows = list(session.exec(select(LogRecord).order_by(col(LogRecord.id))))
            assert [r.seq for r in rows] == list(range(1, 601))
            assert rows[0].ts == T0 + timedelta(seconds=1)
            assert rows[0].message == "line 1 ünïcode 'quoted' %s ?"
            since = newest(session, LogFilter(since=T0 + timedelta(seconds=591)), limit=100)
            assert [r.seq for r in since] == list(range(591, 601))
    finally:
        engine.dispose()
