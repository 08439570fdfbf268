"""Specification of daemon health: registration, heartbeats, silence and config results."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from cp.health import (
    HealthLimits,
    record_config_applied,
    record_heartbeats,
    record_hello,
    record_rejected_message,
    update_statuses,
)
from cp.heartbeats import ReceivedHeartbeat
from cp.models import Daemon, DaemonEvent, DaemonStatus
from cp.protocol import ConfigApplied, DaemonHello, Heartbeat

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
OFFLINE_AFTER = 15.0


def mark_silent_daemons_offline(session: Session, *, now: datetime, offline_after: float) -> list[str]:
    limits = HealthLimits(offline_after=offline_after, probe_timeout=5, backlog_threshold=100)
    return [d.name for d in update_statuses(session, now=now, limits=limits)]


def events(session: Session) -> list[DaemonEvent]:
    return list(session.exec(select(DaemonEvent).order_by(col(DaemonEvent.id))))


def hello(name: str = "edge-1", **fields: object) -> DaemonHello:
    return DaemonHello(name=name, software_version="0.1.0", **fields)  # type: ignore[arg-type]


def record_heartbeat(session: Session, beat: Heartbeat, *, now: datetime) -> None:
    record_heartbeats(session, [ReceivedHeartbeat(beat=beat, received_at=now)])


def daemons(session: Session) -> list[Daemon]:
    return list(session.exec(select(Daemon)))


def test_hello_from_a_declared_daemon_records_it_online(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-1", labels={"site": "lab"}, status=DaemonStatus.UNKNOWN)

    record_hello(session, hello(labels={"site": "lab"}, hostname="box", applied_config_version=3), now=NOW)
    session.commit()

    daemon = get_daemon("edge-1")
    assert (daemon.declared, daemon.status, daemon.labels) == (True, DaemonStatus.ONLINE, {"site": "lab"})
    assert (daemon.software_version, daemon.hostname, daemon.applied_config_version) == ("0.1.0", "box", 3)
    assert (daemon.last_heartbeat_at, daemon.status_since) == (NOW, NOW)
    [event] = events(session)
    assert (event.daemon, event.from_status, event.to_status) == ("edge-1", "unknown", "online")


def test_hello_from_an_undeclared_name_creates_no_daemon_row(session: Session) -> None:
    assert record_hello(session, hello("stranger", labels={"site": "lab"}), now=NOW) is None
    session.commit()

    assert (daemons(session), events(session)) == ([], [])


def test_a_hello_or_heartbeat_from_a_daemon_removed_from_the_configuration_is_not_applied(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-gone", status=DaemonStatus.OFFLINE, declared=False)

    assert record_hello(session, hello("edge-gone"), now=NOW) is None
    batch = record_heartbeats(session, [ReceivedHeartbeat(Heartbeat(name="edge-gone", sent_at=NOW), NOW)])
    session.commit()

    assert [r.beat.name for r in batch.undeclared] == ["edge-gone"]
    assert (get_daemon("edge-gone").status, get_daemon("edge-gone").last_heartbeat_at) == (
        DaemonStatus.OFFLINE,
        None,
    )


def test_heartbeats_of_many_daemons_are_written_together_keeping_each_daemons_newest(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-1", status=DaemonStatus.ONLINE)
    add_daemon("edge-2", status=DaemonStatus.UNKNOWN)
    older = Heartbeat(name="edge-1", sent_at=NOW, running_runs=["a@1"], cpu_percent=1.0)
    newer = Heartbeat(name="edge-1", sent_at=NOW + timedelta(seconds=5), cpu_percent=2.0)
    other = Heartbeat(name="edge-2", sent_at=NOW, running_runs=["b@1", "c@1"])
    later = NOW + timedelta(seconds=6)

    batch = record_heartbeats(
        session,
        [ReceivedHeartbeat(newer, later), ReceivedHeartbeat(older, later), ReceivedHeartbeat(other, NOW)],
    )
    session.commit()

    assert sorted(r.beat.name for r in batch.applied) == ["edge-1", "edge-2"]
    assert batch.undeclared == []
    one, two = get_daemon("edge-1"), get_daemon("edge-2")
    assert (one.last_heartbeat_at, one.running_runs, one.cpu_percent) == (later, 0, 2.0)
    assert (two.last_heartbeat_at, two.running_runs, two.status) == (NOW, 2, DaemonStatus.ONLINE)
    assert [(e.daemon, e.from_status, e.to_status) for e in events(session)] == [
        ("edge-2", "unknown", "online")
    ]


def test_hello_from_a_declared_daemon_keeps_the_declared_labels(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-1", labels={"site": "berlin"}, status=DaemonStatus.UNKNOWN)

    record_hello(session, hello(labels={"site": "paris"}), now=NOW)
    session.commit()

    assert get_daemon("edge-1").labels == {"site": "berlin"}


def test_a_heartbeat_brings_an_offline_daemon_online_and_records_the_transition(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-1", status=DaemonStatus.OFFLINE)
    beat = Heartbeat(name="edge-1", sent_at=NOW, running_runs=["a@1", "b@1"], cpu_percent=12.5, memory_mb=80)

    record_heartbeat(session, beat, now=NOW)
    session.commit()

    daemon = get_daemon("edge-1")
    assert (daemon.status, daemon.last_heartbeat_at, daemon.running_runs) == (DaemonStatus.ONLINE, NOW, 2)
    assert (daemon.cpu_percent, daemon.memory_mb) == (12.5, 80)
    assert [(e.from_status, e.to_status, e.reason) for e in events(session)] == [
        ("offline", "online", "heartbeat")
    ]


def test_a_heartbeat_received_before_the_last_one_recorded_changes_nothing(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    # a restarted worker reads a dead daemon's last heartbeat key again: it must not bring it back
    add_daemon("edge-1", status=DaemonStatus.OFFLINE)
    session.get(Daemon, get_daemon("edge-1").id).last_heartbeat_at = NOW  # type: ignore[union-attr]
    session.commit()

    beat = Heartbeat(name="edge-1", sent_at=NOW, running_runs=["a@1"])
    old = ReceivedHeartbeat(beat, NOW - timedelta(seconds=30))
    batch = record_heartbeats(session, [old])
    session.commit()

    assert batch.applied == [] and batch.undeclared == []
    daemon = get_daemon("edge-1")
    assert (daemon.status, daemon.last_heartbeat_at, daemon.running_runs) == (DaemonStatus.OFFLINE, NOW, 0)
    assert events(session) == []


def test_a_heartbeat_from_an_online_daemon_records_no_transition(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", status=DaemonStatus.ONLINE)

    record_heartbeat(session, Heartbeat(name="edge-1", sent_at=NOW), now=NOW)
    session.commit()

    assert events(session) == []


def test_only_daemons_silent_longer_than_the_threshold_go_offline(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-silent", last_heartbeat_at=NOW - timedelta(seconds=20))
    add_daemon("edge-degraded", status=DaemonStatus.DEGRADED, last_heartbeat_at=NOW - timedelta(seconds=60))
    add_daemon("edge-recent", last_heartbeat_at=NOW - timedelta(seconds=5))
    add_daemon("edge-at-threshold", last_heartbeat_at=NOW - timedelta(seconds=OFFLINE_AFTER))
    add_daemon("edge-never-seen", status=DaemonStatus.UNKNOWN)
    add_daemon("edge-gone", status=DaemonStatus.OFFLINE, last_heartbeat_at=NOW - timedelta(hours=1))

    changed = mark_silent_daemons_offline(session, now=NOW, offline_after=OFFLINE_AFTER)
    session.commit()

    assert sorted(changed) == ["edge-degraded", "edge-silent"]
    assert get_daemon("edge-recent").status is DaemonStatus.ONLINE
    assert get_daemon("edge-at-threshold").status is DaemonStatus.ONLINE
    assert get_daemon("edge-never-seen").status is DaemonStatus.UNKNOWN
    assert sorted((e.daemon, e.from_status, e.to_status, e.reason) for e in events(session)) == [
        ("edge-degraded", "degraded", "offline", "no heartbeat for 60s"),
        ("edge-silent", "online", "offline", "no heartbeat for 20s"),
    ]


def test_marking_silent_daemons_twice_records_the_transition_once(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-silent", last_heartbeat_at=NOW - timedelta(seconds=20))
    mark_silent_daemons_offline(session, now=NOW, offline_after=OFFLINE_AFTER)
    session.commit()

    again = mark_silent_daemons_offline(session, now=NOW + timedelta(seconds=5), offline_after=OFFLINE_AFTER)
    session.commit()

    assert (again, len(events(session))) == ([], 1)


def test_an_online_daemon_that_never_sent_a_heartbeat_goes_offline(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", status=DaemonStatus.ONLINE)

    assert mark_silent_daemons_offline(session, now=NOW, offline_after=OFFLINE_AFTER) == ["edge-1"]
    session.commit()
    assert events(session)[0].reason == "no heartbeat ever"


def test_a_successful_config_apply_records_the_applied_version(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-1")
    get_daemon("edge-1").config_error = "old failure"

    record_config_applied(session, ConfigApplied(name="edge-1", version=4, ok=True), now=NOW)
    session.commit()

    daemon = get_daemon("edge-1")
    assert (daemon.applied_config_version, daemon.applied_at, daemon.config_error) == (4, NOW, None)
    assert [(e.kind, e.reason) for e in events(session)] == [("config_applied", "version 4")]


def test_a_failed_config_apply_keeps_the_old_version_and_records_the_error(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-1")
    record_config_applied(session, ConfigApplied(name="edge-1", version=4, ok=True), now=NOW)

    failure = ConfigApplied(name="edge-1", version=5, ok=False, error="disk full")
    record_config_applied(session, failure, now=NOW + timedelta(seconds=1))
    session.commit()

    daemon = get_daemon("edge-1")
    assert (daemon.applied_config_version, daemon.config_error) == (4, "disk full")
    assert events(session)[-1].kind == "config_failed"
    assert events(session)[-1].reason == "version 5: disk full"


def test_a_rejected_message_is_recorded_as_a_daemon_event(session: Session) -> None:
    record_rejected_message(
        session, task="cp.heartbeat", daemon="edge-1", reason="v: Input should be 1", now=NOW
    )
    session.commit()

    [event] = events(session)
    assert (event.kind, event.daemon, event.reason) == (
        "message_rejected",
        "edge-1",
        "cp.heartbeat: v: Input should be 1",
    )
