"""Retention deletes old finished history in chunks, each kind after its own period, and never an
active run; on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from beat_schedule import beat_schedule
from cp.alerts.outbox import AlertDelivery, AlertNotice
from cp.db import session_scope
from cp.models import DaemonEvent, LogRecord, Run, RunAttempt, RunState, RunStateChange, RunTrigger
from cp.retention import RetentionPolicy, Sessions, purge_old_records
from cp.settings import Settings

NOW = datetime(2026, 6, 1, tzinfo=UTC)
POLICY = RetentionPolicy(run_days=30, event_days=20, log_days=7, chunk=100)


@pytest.fixture
def engine(engine_on_both: Engine) -> Engine:
    """Every test here on SQLite and on PostgreSQL (the unit suite's own fixtures build on this)."""
    return engine_on_both


def sessions_of(engine: Engine) -> Sessions:
    return lambda: session_scope(engine)


def add_run(session: Session, key: str, state: RunState, finished_days_ago: float | None) -> None:
    finished = NOW - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
    session.add(Run(run_key=key, pipeline="p", trigger=RunTrigger.MANUAL, state=state,
                    created_at=NOW - timedelta(days=60), finished_at=finished))  # fmt: skip
    session.add(RunAttempt(run_key=key, attempt=1, state=state))
    session.add(RunAttempt(run_key=key, attempt=2, state=state))


def count(engine: Engine, table: type[SQLModel]) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def test_each_kind_of_record_goes_after_its_own_period_and_active_runs_stay(engine: Engine) -> None:
    with Session(engine) as session:
        add_run(session, "old-done", RunState.SUCCEEDED, finished_days_ago=40)
        add_run(session, "recent-done", RunState.FAILED, finished_days_ago=5)
        add_run(session, "old-but-running", RunState.RUNNING, finished_days_ago=None)
        for days in (25, 10):  # older and younger than the event period, not the run period
            session.add(DaemonEvent(at=NOW - timedelta(days=days), daemon="d", kind="status"))
            session.add(
                RunStateChange(
                    at=NOW - timedelta(days=days),
                    run_key="recent-done",
                    pipeline="p",
                    attempt=1,
                    to_state="queued",
                )  # fmt: skip
            )
        for seq, days in enumerate((8, 6)):  # either side of the log period
            session.add(LogRecord(daemon="d", seq=seq, ts=NOW - timedelta(days=days), level="INFO",
                                  logger="x", message="m"))  # fmt: skip
        session.commit()

    deleted = purge_old_records(sessions_of(engine), now=NOW, policy=POLICY)

    assert deleted == {
        "run_attempts": 2,
        "runs": 1,
        "run_state_changes": 1,
        "daemon_events": 1,
        "log_records": 1,
        "alert_deliveries": 0,
        "alert_notices": 0,
    }
    with Session(engine) as session:
        assert sorted(r.run_key for r in session.exec(select(Run))) == ["old-but-running", "recent-done"]
        assert {a.run_key for a in session.exec(select(RunAttempt))} == {"old-but-running", "recent-done"}
        assert [c.at for c in session.exec(select(RunStateChange))] == [NOW - timedelta(days=10)]
        assert [e.at for e in session.exec(select(DaemonEvent))] == [NOW - timedelta(days=10)]
        assert [r.ts for r in session.exec(select(LogRecord))] == [NOW - timedelta(days=6)]


def test_a_large_purge_goes_in_transactions_of_one_chunk_each_and_misses_nothing(engine: Engine) -> None:
    old = NOW - timedelta(days=10)
    with engine.begin() as conn:
        conn.execute(
            LogRecord.__table__.insert(),  # type: ignore[attr-defined]
            [
                {"daemon": "d", "seq": i, "ts": old, "level": "INFO", "logger": "x", "message": "m"}
                for i in range(1_050)
            ],
        )
        conn.execute(
            Run.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "run_key": f"r{i}",
                    "pipeline": "p",
                    "trigger": "manual",
                    "state": "succeeded",
                    "attempt": 1,
                    "deliveries": 0,
                    "created_at": old - timedelta(days=40),
                    "finished_at": old - timedelta(days=40),
                    "rows_read": 0,
                    "rows_written": 0,
                    "error_retryable": False,
                }
                for i in range(250)
            ],
        )
    commits: list[int] = []
    event.listen(engine, "commit", lambda conn: commits.append(1))

    deleted = purge_old_records(sessions_of(engine), now=NOW, policy=POLICY)

    assert (deleted["log_records"], deleted["runs"]) == (1_050, 250)
    assert count(engine, LogRecord) == 0 and count(engine, Run) == 0
    # 11 chunks of logs (the last one short), 3 of runs, one each for the empty event and alert tables
    assert len(commits) == 11 + 3 + 2 + 2


def test_the_periods_and_chunk_come_from_the_settings() -> None:
    settings = Settings(retention_days=90, event_retention_days=15, log_retention_days=3, retention_chunk=500)  # type: ignore[call-arg]
    assert RetentionPolicy.from_settings(settings) == RetentionPolicy(
        run_days=90, event_days=15, log_days=3, chunk=500
    )


def test_beat_sends_the_purge_on_the_control_queue_at_the_configured_interval() -> None:
    entry = beat_schedule(Settings(retention_interval=120))["purge-old-records"]  # type: ignore[call-arg]
    assert (entry["task"], entry["schedule"]) == ("cp.purge_old_records", 120)
    assert entry["options"] == {"queue": "mycelial.cp.control", "expires": 120}


def test_finished_alert_notices_and_their_attempts_go_after_the_event_period_pending_ones_stay(
    engine: Engine,
) -> None:
    old = NOW - timedelta(days=25)
    with Session(engine) as session:
        for key, fields in (
            ("old-delivered", {"delivered_at": old}),
            ("old-given-up", {"given_up_at": old}),
            ("old-pending", {}),
            ("recent-delivered", {"delivered_at": NOW - timedelta(days=1)}),
        ):
            created = old if key.startswith("old") else NOW - timedelta(days=1)
            session.add(AlertNotice(dedup_key=key, created_at=created, notifier="n", group_key="g",
                                    status="firing", body={}, **fields))  # fmt: skip
        session.add(AlertDelivery(notice_id=1, notifier="n", at=old, ok=True))
        session.add(AlertDelivery(notice_id=4, notifier="n", at=NOW - timedelta(days=1), ok=True))
        session.commit()

    deleted = purge_old_records(sessions_of(engine), now=NOW, policy=POLICY)

    assert (deleted["alert_notices"], deleted["alert_deliveries"]) == (2, 1)
    with Session(engine) as session:
        assert sorted(n.dedup_key for n in session.exec(select(AlertNotice))) == [
            "old-pending",
            "recent-delivered",
        ]
