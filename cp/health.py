"""Declared daemons' hellos, heartbeats, probes and config results, and status transitions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlmodel import Session, col, select

from cp.heartbeats import ReceivedHeartbeat
from cp.models import Daemon, DaemonEvent, DaemonStatus
from cp.protocol import ConfigApplied, DaemonHello, ProbeReply
from cp.settings import Settings

log = logging.getLogger(__name__)


def declared_daemon(session: Session, name: str) -> Daemon | None:
    """The daemon the configuration declares under ``name``; None for any other name."""
    return session.exec(select(Daemon).where(Daemon.name == name, col(Daemon.declared).is_(True))).first()


def set_status(session: Session, daemon: Daemon, status: DaemonStatus, *, reason: str, now: datetime) -> bool:
    """Move ``daemon`` to ``status``, recording the transition; False when nothing changed."""
    if daemon.status == status:
        return False
    session.add(
        DaemonEvent(
            at=now,
            daemon=daemon.name,
            kind="status",
            from_status=daemon.status,
            to_status=status,
            reason=reason,
        )
    )
    log.info("daemon %s: %s -> %s (%s)", daemon.name, daemon.status, status, reason)
    daemon.status, daemon.status_since, daemon.status_reason = status, now, reason
    session.add(daemon)
    return True


def record_hello(session: Session, hello: DaemonHello, *, now: datetime) -> Daemon | None:
    """Record a declared daemon's hello; None (and nothing written) for an undeclared name."""
    daemon = declared_daemon(session, hello.name)
    if daemon is None:
        return None
    if hello.labels != daemon.labels:
        log.warning(
            "daemon %s reports labels %s; the configuration declares %s",
            hello.name,
            hello.labels,
            daemon.labels,
        )
    daemon.software_version = hello.software_version
    daemon.hostname = hello.hostname
    daemon.applied_config_version = hello.applied_config_version
    daemon.last_heartbeat_at = now
    set_status(session, daemon, DaemonStatus.ONLINE, reason="said hello", now=now)
    session.add(daemon)
    return daemon


@dataclass(frozen=True)
class HeartbeatBatch:
    applied: list[ReceivedHeartbeat]  # from declared daemons, now in their rows
    undeclared: list[ReceivedHeartbeat]  # from names the configuration does not declare


def record_heartbeats(session: Session, beats: Sequence[ReceivedHeartbeat]) -> HeartbeatBatch:
    """Write the newest heartbeat of each declared daemon with one bulk UPDATE (per 500 names)."""
    newest: dict[str, ReceivedHeartbeat] = {}
    for received in beats:
        known = newest.get(received.beat.name)
        if known is None or received.beat.sent_at >= known.beat.sent_at:
            newest[received.beat.name] = received
    rows: dict[str, tuple[int, DaemonStatus]] = {}
    stale: set[str] = set()
    names = list(newest)
    for start in range(0, len(names), _CHUNK):
        chunk = names[start : start + _CHUNK]
        query = select(Daemon.id, Daemon.name, Daemon.status, Daemon.last_heartbeat_at).where(
            col(Daemon.declared).is_(True), col(Daemon.name).in_(chunk)
        )
        for daemon_id, name, status, heard_at in session.exec(query):
            if daemon_id is not None:
                rows[name] = (daemon_id, DaemonStatus(status))
                # a heartbeat never moves the row back in time: a heartbeat key read again by a
                # restarted worker, or one written before the hello that came after it
                if heard_at is not None and newest[name].received_at <= heard_at:
                    stale.add(name)
    applied = [newest[name] for name in names if name in rows and name not in stale]
    if applied:
        update = (
            sa_update(Daemon)
            .where(col(Daemon.id) == bindparam("b_id"))
            .values(
                last_heartbeat_at=bindparam("b_at"),
                running_runs=bindparam("b_running"),
                cpu_percent=bindparam("b_cpu"),
                memory_mb=bindparam("b_memory"),
                running_progress=bindparam("b_progress"),
            )
        )
        session.connection().execute(
            update,
            [
                {
                    "b_id": rows[r.beat.name][0],
                    "b_at": r.received_at,
                    "b_running": len(r.beat.running_runs),
                    "b_cpu": r.beat.cpu_percent,
                    "b_memory": r.beat.memory_mb,
                    "b_progress": [p.model_dump(mode="json") for p in r.beat.progress],
                }
                for r in applied
            ],
        )
    returning = [rows[r.beat.name][0] for r in applied if rows[r.beat.name][1] in _BACK_FROM]
    if returning:
        # back: heartbeats prove the process runs; the probe check decides online vs degraded
        back = select(Daemon).where(col(Daemon.id).in_(returning)).execution_options(populate_existing=True)
        for daemon in session.exec(back):
            at = newest[daemon.name].received_at
            set_status(session, daemon, DaemonStatus.ONLINE, reason="heartbeat", now=at)
    return HeartbeatBatch(applied=applied, undeclared=[newest[name] for name in names if name not in rows])


_CHUNK = 500
_BACK_FROM = frozenset({DaemonStatus.OFFLINE, DaemonStatus.UNKNOWN})


@dataclass(frozen=True)
class HealthLimits:
    offline_after: float  # seconds without a heartbeat
    probe_timeout: float  # seconds a canary probe may stay unanswered
    backlog_threshold: int  # messages waiting in the daemon's queue

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthLimits:
        """The thresholds of these settings: the checker and every view use the same."""
        return cls(
            offline_after=settings.offline_after,
            probe_timeout=settings.probe_timeout,
            backlog_threshold=settings.backlog_threshold,
        )


class HealthFacts(Protocol):
    """What a daemon's status is decided from: a ``Daemon`` row has it, so has ``Facts``."""

    @property
    def status(self) -> DaemonStatus: ...
    @property
    def last_heartbeat_at(self) -> datetime | None: ...
    @property
    def last_probe_sent_at(self) -> datetime | None: ...
    @property
    def last_probe_reply_at(self) -> datetime | None: ...
    @property
    def queue_depth(self) -> int | None: ...


@dataclass(frozen=True)
class Facts:
    status: DaemonStatus
    last_heartbeat_at: datetime | None
    last_probe_sent_at: datetime | None
    last_probe_reply_at: datetime | None
    queue_depth: int | None


def evaluate(
    daemon: HealthFacts, *, now: datetime, limits: HealthLimits, listening_since: datetime | None = None
) -> tuple[DaemonStatus, str]:
    """The status a daemon should have now, with the reason. Pure. ``listening_since``: when the
    control plane began consuming (after a broker outage, say); no heartbeat could arrive before."""
    if daemon.last_heartbeat_at is None:
        return (
            (daemon.status, "never heard from")
            if daemon.status is DaemonStatus.UNKNOWN
            else (DaemonStatus.OFFLINE, "no heartbeat ever")
        )
    heard = daemon.last_heartbeat_at
    if listening_since is not None and listening_since > heard:
        heard = listening_since  # a daemon cannot be heard while nobody listens
    silent = (now - heard).total_seconds()
    if silent > limits.offline_after:
        return DaemonStatus.OFFLINE, f"no heartbeat for {silent:.0f}s"
    sent, replied = daemon.last_probe_sent_at, daemon.last_probe_reply_at
    if sent is not None and (replied is None or replied < sent):
        waiting = (now - sent).total_seconds()
        if waiting > limits.probe_timeout:
            return (
                DaemonStatus.DEGRADED,
                f"heartbeats arrive but the probe through its queue is unanswered for {waiting:.0f}s",
            )
    if daemon.queue_depth is not None and daemon.queue_depth > limits.backlog_threshold:
        return DaemonStatus.DEGRADED, f"queue backlog {daemon.queue_depth} over {limits.backlog_threshold}"
    return DaemonStatus.ONLINE, "heartbeats and probes answered"


def update_statuses(
    session: Session, *, now: datetime, limits: HealthLimits, listening_since: datetime | None = None
) -> list[Daemon]:
    """Re-evaluate every daemon; return those that went offline in this call.

    Decided from a few columns per daemon; only daemons whose status changes are loaded whole.
    """
    table = Daemon.__table__.c  # type: ignore[attr-defined]
    facts = sa_select(
        table.id,
        table.status,
        table.last_heartbeat_at,
        table.last_probe_sent_at,
        table.last_probe_reply_at,
        table.queue_depth,
    )
    changes: dict[int, tuple[DaemonStatus, str]] = {}
    session.flush()  # pending changes (queue depths) count
    for daemon_id, *row in session.connection().execute(facts):
        current = Facts(DaemonStatus(row[0]), *row[1:])
        status, reason = evaluate(current, now=now, limits=limits, listening_since=listening_since)
        if status != current.status and daemon_id is not None:
            changes[daemon_id] = (status, reason)
    went_offline = []
    if changes:
        for daemon in session.exec(select(Daemon).where(col(Daemon.id).in_(list(changes)))):
            status, reason = changes[daemon.id or 0]
            if set_status(session, daemon, status, reason=reason, now=now) and status is DaemonStatus.OFFLINE:
                went_offline.append(daemon)
    return went_offline


def record_probe_sent(session: Session, daemon: Daemon, *, probe_id: str, now: datetime) -> None:
    if daemon.last_probe_sent_at is None or (
        daemon.last_probe_reply_at is not None and daemon.last_probe_reply_at >= daemon.last_probe_sent_at
    ):
        # keep the oldest unanswered probe's time: a daemon that stopped consuming stays overdue
        daemon.last_probe_sent_at = now
    daemon.last_probe_id = probe_id
    session.add(daemon)


def record_probe_reply(session: Session, reply: ProbeReply, *, now: datetime) -> Daemon | None:
    """Note a canary's return; a reply from an undeclared name is ignored (it was never probed)."""
    daemon = declared_daemon(session, reply.name)
    if daemon is None:
        log.info("ignored a probe reply from %s, which the configuration does not declare", reply.name[:80])
        return None
    daemon.last_probe_reply_at = now
    daemon.last_probe_rtt_ms = round((now - reply.sent_at).total_seconds() * 1000, 1)
    session.add(daemon)
    return daemon


def record_config_applied(session: Session, msg: ConfigApplied, *, now: datetime) -> Daemon | None:
    """Record a config result; one from an undeclared name is ignored (it was never pushed one)."""
    daemon = declared_daemon(session, msg.name)
    if daemon is None:
        log.info("ignored a config result from %s, which the configuration does not declare", msg.name[:80])
        return None
    if msg.ok:
        daemon.applied_config_version, daemon.applied_at, daemon.config_error = (
            msg.version,
            now,
            None,
        )
    else:
        daemon.config_error = msg.error
    session.add(
        DaemonEvent(
            at=now,
            daemon=msg.name,
            kind="config_applied" if msg.ok else "config_failed",
            reason=f"version {msg.version}" + (f": {msg.error}" if msg.error else ""),
        )
    )
    session.add(daemon)
    return daemon


def record_rejected_message(
    session: Session,
    *,
    task: str,
    daemon: str | None,
    reason: str,
    now: datetime,
    kind: str = "message_rejected",
) -> None:
    """An event for a message taken off the queue unprocessed; an oversized name is not stored."""
    if daemon is not None and len(daemon) > REJECTED_NAME_MAX:
        reason, daemon = f"{reason} (sender name of {len(daemon)} characters)", None
    if len(reason) > REJECTED_REASON_MAX:
        reason = f"{reason[:REJECTED_REASON_MAX]}…"
    session.add(DaemonEvent(at=now, daemon=daemon, kind=kind, reason=f"{task}: {reason}"))


REJECTED_NAME_MAX = 255
REJECTED_REASON_MAX = 2_000


def stale_config_daemons(session: Session, *, now: datetime, repush_after: float) -> list[Daemon]:
    """Online declared daemons whose applied config lags the desired one and were not pushed recently."""
    cutoff = now - timedelta(seconds=repush_after)
    out = []
    online = select(Daemon).where(col(Daemon.status) == DaemonStatus.ONLINE, col(Daemon.declared).is_(True))
    for daemon in session.exec(online):
        if daemon.desired_config_version is None:
            continue
        if daemon.applied_config_version == daemon.desired_config_version:
            continue
        if daemon.config_pushed_at is not None and daemon.config_pushed_at > cutoff:
            continue
        out.append(daemon)
    return out
