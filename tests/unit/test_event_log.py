"""`mycelial events`: daemon events and run state changes in one feed, filtered in SQL, and the
time options it takes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cp.cli.output import EXIT_BAD_INPUT, CliError
from cp.cli.time_options import parse_time, parse_window
from cp.event_log import EventFilter, event_rows, unknown_kinds
from cp.models import DaemonEvent, RunStateChange

T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(engine_on_both: Engine) -> Engine:
    """Every test here on SQLite and on PostgreSQL (the unit suite's own fixtures build on this)."""
    return engine_on_both


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def feed(session: Session) -> Session:
    """Two daemons' events and two runs' state changes, interleaved in time."""
    session.add(DaemonEvent(at=at(0), daemon="edge-1", kind="status", from_status="unknown",
                            to_status="online", reason="heartbeat"))  # fmt: skip
    session.add(DaemonEvent(at=at(2), daemon="edge-2", kind="config_failed", reason="version 3: bad"))
    session.add(DaemonEvent(at=at(4), daemon=None, kind="message_rejected", reason="cp.heartbeat: bad"))
    session.add(DaemonEvent(at=at(6), daemon="edge-1", kind="status", from_status="online",
                            to_status="offline", reason="no heartbeat"))  # fmt: skip
    for minute, key, pipeline, daemon, to in [
        (1, "orders@1", "orders", "edge-1", "queued"),
        (3, "orders@1", "orders", "edge-1", "running"),
        (5, "stock@1", "stock", "edge-2", "queued"),
        (7, "orders@1", "orders", "edge-1", "succeeded"),
    ]:
        session.add(RunStateChange(at=at(minute), run_key=key, pipeline=pipeline, attempt=1, daemon=daemon,
                                   to_state=to))  # fmt: skip
    session.commit()
    return session


def shown(session: Session, **wanted: object) -> list[tuple[str, str | None, str | None]]:
    return [(e["kind"], e["daemon"], e["to"]) for e in event_rows(session, EventFilter(**wanted))]  # type: ignore[arg-type]


def test_every_event_is_listed_oldest_first(feed: Session) -> None:
    assert shown(feed) == [
        ("status", "edge-1", "online"),
        ("run", "edge-1", "queued"),
        ("config_failed", "edge-2", None),
        ("run", "edge-1", "running"),
        ("message_rejected", None, None),
        ("run", "edge-2", "queued"),
        ("status", "edge-1", "offline"),
        ("run", "edge-1", "succeeded"),
    ]


def test_the_limit_keeps_the_newest(feed: Session) -> None:
    assert shown(feed, limit=3) == [("run", "edge-2", "queued"), ("status", "edge-1", "offline"),
                                    ("run", "edge-1", "succeeded")]  # fmt: skip


def test_filters_by_daemon_pipeline_run_kind_and_time(feed: Session) -> None:
    assert shown(feed, daemon="edge-2") == [("config_failed", "edge-2", None), ("run", "edge-2", "queued")]
    assert shown(feed, pipeline="stock") == [("run", "edge-2", "queued")]
    assert [to for _, _, to in shown(feed, run_key="orders@1")] == ["queued", "running", "succeeded"]
    assert shown(feed, kinds=frozenset({"status"})) == [("status", "edge-1", "online"),
                                                        ("status", "edge-1", "offline")]  # fmt: skip
    assert shown(feed, kinds=frozenset({"run", "config_failed"}), since=at(2), until=at(5)) == [
        ("config_failed", "edge-2", None),
        ("run", "edge-1", "running"),
    ]


def test_run_events_carry_their_run_and_attempt(feed: Session) -> None:
    [event] = event_rows(feed, EventFilter(pipeline="stock"))
    assert event == {
        "at": at(5).isoformat(),
        "kind": "run",
        "daemon": "edge-2",
        "pipeline": "stock",
        "run_key": "stock@1",
        "attempt": 1,
        "from": None,
        "to": "queued",
        "reason": "",
    }


def test_a_kind_is_unknown_unless_the_control_plane_writes_it_or_an_event_has_it(session: Session) -> None:
    session.add(DaemonEvent(at=T0, daemon="edge-1", kind="log_spool_dropped", reason="12 records"))
    session.commit()
    kinds = frozenset({"status", "run", "log_spool_dropped", "stauts"})
    assert unknown_kinds(session, kinds) == ["stauts"]


NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("1w", NOW - timedelta(days=7)),
        ("2026-01-31T10:00:00Z", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),
        ("2026-01-31T11:00:00+01:00", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),
        ("2026-01-31 10:00", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),  # no zone: UTC
        ("2026-01-30", datetime(2026, 1, 30, tzinfo=UTC)),
    ],
    ids=["seconds", "minutes", "hours", "fraction", "weeks", "iso-z", "iso-offset", "iso-naive", "date"],
)
def test_times_are_ages_back_from_now_or_iso_times(text: str, expected: datetime) -> None:
    assert parse_time("--since", text, now=NOW) == expected


@pytest.mark.parametrize(
    "text", ["10", "ten minutes", "10y", "-5m", "2026-13-01", "", "9" * 100], ids=lambda t: f"bad-{t[:12]}"
)
def test_anything_else_is_bad_input_naming_the_option(text: str) -> None:
    with pytest.raises(CliError) as raised:
        parse_time("--until", text, now=NOW)
    assert raised.value.code == EXIT_BAD_INPUT
    assert str(raised.value).startswith("--until: ") and "\n" not in str(raised.value)


def test_a_window_must_run_forwards() -> None:
    assert parse_window("2h", "1h", now=NOW) == (NOW - timedelta(hours=2), NOW - timedelta(hours=1))
    assert parse_window(None, None, now=NOW) == (None, None)
    with pytest.raises(CliError) as raised:
        parse_window("1h", "2h", now=NOW)
    assert raised.value.code == EXIT_BAD_INPUT
