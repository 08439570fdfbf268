"""Stored log records: one bulk insert per batch, a redelivered record stored once, and the queries
`mycelial logs` makes: filters, pages by id, and warnings grouped by shape."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, col, select

from cp.logs.ingest import LOGS_DROPPED, record_dropped, store_batch
from cp.logs.query import LogFilter, after, error_groups, levels_from, newest
from cp.models import DaemonEvent, LogRecord
from cp.protocol import LogBatch, MessageError, log_row, parse

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def batch(name: str, seqs: range, **fields: Any) -> LogBatch:
    records = [
        {
            "seq": s,
            "ts": (T0 + timedelta(seconds=s)).isoformat(),
            "level": fields.get("level", "INFO"),
            "logger": "workers.jobs",
            "pipeline": fields.get("pipeline"),
            "run_key": fields.get("run_key"),
            "attempt": fields.get("attempt"),
            "message": fields.get("message", "line {s}").format(s=s),
        }
        for s in seqs
    ]
    rows = [log_row(r) for r in records]
    return parse(LogBatch, {"v": 1, "name": name, "rows": rows, "dropped": fields.get("dropped", 0)})


def test_a_redelivered_batch_stores_nothing_twice(session: Session) -> None:
    assert store_batch(session, batch("edge-1", range(1, 101))) == 100
    assert store_batch(session, batch("edge-1", range(50, 151))) == 50
    session.commit()
    seqs = session.exec(select(LogRecord.seq).where(LogRecord.daemon == "edge-1").order_by(col(LogRecord.id)))
    assert list(seqs) == list(range(1, 151))


def test_a_large_redelivered_batch_stores_each_record_once(session: Session) -> None:
    assert store_batch(session, batch("edge-1", range(1, 1_001))) == 1_000
    assert store_batch(session, batch("edge-1", range(700, 1_311))) == 310
    session.commit()
    stored = session.exec(select(LogRecord).where(LogRecord.daemon == "edge-1").order_by(col(LogRecord.id)))
    records = list(stored)
    assert [r.seq for r in records] == list(range(1, 1_311))
    assert records[-1].message == "line 1310" and records[-1].ts == T0 + timedelta(seconds=1_310)


def test_two_daemons_may_use_the_same_seq(session: Session) -> None:
    store_batch(session, batch("edge-1", range(1, 4)))
    store_batch(session, batch("edge-2", range(1, 4)))
    assert len(session.exec(select(LogRecord)).all()) == 6


def test_a_drop_report_is_one_event_however_often_it_is_delivered(session: Session) -> None:
    reported = batch("edge-1", range(10, 12), dropped=7)
    for _ in range(3):
        record_dropped(session, reported, now=T0)
        session.flush()
    (event,) = session.exec(select(DaemonEvent).where(DaemonEvent.kind == LOGS_DROPPED)).all()
    assert event.daemon == "edge-1" and "7 log record(s) dropped" in event.reason


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        pytest.param([{"seq": 2}, {"seq": 1}], "increasing seq", id="out-of-order"),
        pytest.param([{"seq": 1}, {"seq": 1}], "increasing seq", id="repeated-seq"),
        pytest.param([{"seq": 0}], "greater than or equal to 1", id="seq-zero"),
        pytest.param([{"seq": 2**53 + 1}], "less than or equal", id="seq-too-big"),
        pytest.param(
            [{"seq": s, "message": "x" * 8_000} for s in range(1, 300)], "at most 2000000", id="total"
        ),
        pytest.param([{"seq": 1, "level": "LOUD"}], "rows.0.2: Input should be 'DEBUG'", id="unknown-level"),
        pytest.param(
            [{"seq": "1"}, {"seq": "two"}], "rows.1.0: Input should be a valid integer", id="seq-text"
        ),
        pytest.param(
            [{"seq": 1, "ts": "2026-12-01T12:00:00"}], "rows.0.1: Input should have timezone", id="naive-ts"
        ),
        pytest.param(
            [{"seq": 1, "logger": ["x"]}], "rows.0.3: Input should be a valid string", id="logger-list"
        ),
        pytest.param([{"seq": 1, "attempt": 0}], "rows.0.6: Input should be greater", id="attempt-zero"),
        pytest.param([{"seq": 1, "pipeline": "a b"}], "rows.0.4: String should match", id="pipeline-name"),
        pytest.param([], "at least 1", id="empty"),
    ],
)
def test_a_malformed_batch_is_refused(records: list[dict[str, Any]], problem: str) -> None:
    base = {"ts": T0.isoformat(), "level": "INFO", "logger": "x", "message": "m"}
    rows = [log_row({**base, **r}) for r in records]
    with pytest.raises(MessageError, match=problem):
        parse(LogBatch, {"v": 1, "name": "edge-1", "rows": rows})


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(
            lambda row: row.append("edge-2"), "rows.0: Tuple should have at most 8 items", id="long-row"
        ),
        pytest.param(lambda row: row.pop(), "rows.0.7: Field required", id="short-row"),
        pytest.param(lambda row: row.clear(), "rows.0.0: Field required", id="empty-row"),
        pytest.param(
            lambda row: row.__setitem__(7, 7), "rows.0.7: Input should be a valid string", id="message-int"
        ),
    ],
)
def test_a_row_of_the_wrong_shape_is_refused(change: Callable[[list[Any]], None], problem: str) -> None:
    row = log_row({"seq": 1, "ts": T0.isoformat(), "level": "INFO", "logger": "x", "message": "m"})
    change(row)
    with pytest.raises(MessageError, match=re.escape(problem)):
        parse(LogBatch, {"v": 1, "name": "edge-1", "rows": [row]})


def test_records_as_objects_are_not_the_wire_form() -> None:
    record = {"seq": 1, "ts": T0.isoformat(), "level": "INFO", "logger": "x", "message": "m"}
    with pytest.raises(MessageError, match="records: Extra inputs"):
        parse(LogBatch, {"v": 1, "name": "edge-1", "records": [record]})
    with pytest.raises(MessageError, match="rows.0: Input should be a valid tuple"):
        parse(LogBatch, {"v": 1, "name": "edge-1", "rows": [record]})


@pytest.fixture
def stored(session: Session) -> Session:
    store_batch(session, batch("edge-1", range(1, 11), pipeline="orders", run_key="orders@1", attempt=1))
    store_batch(
        session, batch("edge-2", range(1, 6), level="WARNING", message="retry {s} of host db.example.com")
    )
    store_batch(session, batch("edge-2", range(6, 8), level="ERROR", message="cannot open '/x/{s}'"))
    session.commit()
    return session


@pytest.mark.parametrize(
    ("where", "count"),
    [
        pytest.param(LogFilter(), 17, id="all"),
        pytest.param(LogFilter(daemon="edge-2"), 7, id="daemon"),
        pytest.param(LogFilter(pipeline="orders"), 10, id="pipeline"),
        pytest.param(LogFilter(run_key="orders@1"), 10, id="run"),
        pytest.param(LogFilter(levels=levels_from("warning")), 7, id="min-level-warning"),
        pytest.param(LogFilter(levels=levels_from("error")), 2, id="min-level-error"),
        pytest.param(LogFilter(since=T0 + timedelta(seconds=6)), 5 + 2, id="since"),
        pytest.param(LogFilter(until=T0 + timedelta(seconds=3)), 2 + 2, id="until"),
        pytest.param(LogFilter(text="DB.EXAMPLE"), 5, id="text-any-case"),
        pytest.param(LogFilter(text="100%"), 0, id="text-wildcards-are-literal"),
    ],
)
def test_filters(stored: Session, where: LogFilter, count: int) -> None:
    assert len(newest(stored, where, limit=1_000)) == count


def test_newest_are_shown_oldest_first_and_pages_go_by_id(stored: Session) -> None:
    shown = newest(stored, LogFilter(daemon="edge-1"), limit=3)
    assert [r.seq for r in shown] == [8, 9, 10]
    first = newest(stored, LogFilter(), limit=1_000)[0]
    assert first.id is not None
    assert len(after(stored, LogFilter(), after_id=first.id, limit=1_000)) == 16


def test_warnings_and_errors_are_grouped_by_shape(stored: Session) -> None:
    groups, truncated = error_groups(stored, LogFilter(levels=levels_from("warning")), scan_limit=1_000)
    assert not truncated
    assert [(g.count, g.level, g.shape) for g in groups] == [
        (5, "WARNING", "retry <n> of host <host>"),
        (2, "ERROR", "cannot open <str>"),
    ]
    retry = groups[0].as_dict()
    assert retry["daemons"] == ["edge-2"] and retry["first_seen"] < retry["last_seen"]
    assert retry["example"] == "retry 5 of host db.example.com"


def test_grouping_reads_at_most_the_scan_limit(stored: Session) -> None:
    groups, truncated = error_groups(stored, LogFilter(), scan_limit=3)
    assert truncated and sum(g.count for g in groups) == 3
