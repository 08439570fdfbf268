"""Specification of undeclared daemons: noted once in a while, bounded, and used by nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from cp.health import HealthLimits
from cp.models import Daemon, DaemonEvent, DaemonStatus, UndeclaredDaemon
from cp.undeclared import UNDECLARED_EVENT, RecentNames, record_undeclared
from cp.views import daemon_rows

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
TEN_MINUTES = 600.0


def note(session: Session, name: str, at: datetime, *, keep: int = 100, **fields: str) -> bool:
    wrote = record_undeclared(
        session, name=name, now=at, interval=TEN_MINUTES, keep=keep, via="heartbeat", **fields
    )
    session.commit()
    return wrote


def undeclared_events(session: Session) -> list[DaemonEvent]:
    query = select(DaemonEvent).where(DaemonEvent.kind == UNDECLARED_EVENT).order_by(col(DaemonEvent.id))
    return list(session.exec(query))


def test_a_worker_remembers_a_name_for_the_interval_and_then_lets_it_be_recorded_again() -> None:
    recent = RecentNames(capacity=10, interval=TEN_MINUTES)
    assert recent.due("stranger", now=NOW) is True

    recent.remember(["stranger"], now=NOW)

    assert recent.due("stranger", now=NOW + timedelta(minutes=9)) is False
    assert recent.due("stranger", now=NOW + timedelta(minutes=10)) is True


def test_a_worker_remembers_at_most_its_capacity_of_names_forgetting_the_oldest() -> None:
    recent = RecentNames(capacity=2, interval=TEN_MINUTES)
    recent.remember(["a", "b", "c"], now=NOW)

    assert recent.due("c", now=NOW) is False
    assert recent.due("a", now=NOW) is True  # forgotten: recorded again


def test_a_huge_name_is_remembered_by_its_digest() -> None:
    recent = RecentNames(capacity=2, interval=TEN_MINUTES)
    huge = "n" * 1_000_000
    recent.remember([huge], now=NOW)

    assert recent.due(huge, now=NOW) is False
    assert all(len(key) < 100 for key in recent._seen)


def test_an_undeclared_name_gets_one_event_per_interval_across_workers(session: Session) -> None:
    assert note(session, "stranger", NOW, hostname="box") is True
    assert note(session, "stranger", NOW + timedelta(minutes=5)) is False
    assert note(session, "stranger", NOW + timedelta(minutes=10)) is True

    assert [e.at for e in undeclared_events(session)] == [NOW, NOW + timedelta(minutes=10)]
    [row] = session.exec(select(UndeclaredDaemon)).all()
    assert (row.first_seen_at, row.last_seen_at, row.hostname) == (NOW, NOW + timedelta(minutes=10), "box")
    assert session.exec(select(Daemon)).all() == []


def test_the_kept_undeclared_names_are_bounded_and_the_least_recently_seen_go_first(session: Session) -> None:
    for i, name in enumerate(["a", "b", "c", "d"]):
        note(session, name, NOW + timedelta(seconds=i), keep=3)
    note(session, "a", NOW + timedelta(seconds=10), keep=3)  # seen again: kept
    note(session, "e", NOW + timedelta(seconds=11), keep=3)

    assert sorted(session.exec(select(UndeclaredDaemon.name)).all()) == ["a", "d", "e"]


def test_the_daemon_listing_shows_undeclared_names_as_undeclared_beside_declared_daemons(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", status=DaemonStatus.ONLINE, last_heartbeat_at=NOW - timedelta(seconds=1))
    add_daemon("edge-gone", status=DaemonStatus.OFFLINE, declared=False)
    note(session, "stranger", NOW, hostname="box", software_version="0.9")
    note(session, "edge-gone", NOW)

    limits = HealthLimits(offline_after=15, probe_timeout=5, backlog_threshold=100)
    rows = {r["name"]: r for r in daemon_rows(session, now=NOW, limits=limits, stale_after=15)}

    assert sorted(rows) == ["edge-1", "edge-gone", "stranger"]
    assert (rows["edge-1"]["status"], rows["edge-1"]["declared"]) == ("online", True)
    assert (rows["edge-gone"]["status"], rows["edge-gone"]["declared"]) == ("undeclared", False)
    stranger = rows["stranger"]
    assert (stranger["status"], stranger["declared"], stranger["hostname"]) == ("undeclared", False, "box")
    assert stranger["last_seen_at"] == NOW.isoformat()
    assert set(stranger) == set(rows["edge-1"])
