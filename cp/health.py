"""Daemon registration, heartbeats and status transitions."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from cp.models import Daemon, DaemonEvent, DaemonStatus
from cp.protocol import ConfigApplied, DaemonHello, Heartbeat

log = logging.getLogger(__name__)


def get_or_register(session: Session, name: str) -> Daemon:
    daemon = session.exec(select(Daemon).where(Daemon.name == name)).first()
    if daemon is None:
        daemon = Daemon(name=name, declared=False)
        session.add(daemon)
        log.info("daemon %s registered (not declared in the configuration)", name)
    return daemon


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


def record_hello(session: Session, hello: DaemonHello, *, now: datetime) -> Daemon:
    daemon = get_or_register(session, hello.name)
    if not daemon.declared:
        daemon.labels = hello.labels
    elif hello.labels != daemon.labels:
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


def record_heartbeat(session: Session, beat: Heartbeat, *, now: datetime) -> Daemon:
    daemon = get_or_register(session, beat.name)
    daemon.last_heartbeat_at = now
    daemon.running_runs = len(beat.running_runs)
    daemon.cpu_percent, daemon.memory_mb = beat.cpu_percent, beat.memory_mb
    set_status(session, daemon, DaemonStatus.ONLINE, reason="heartbeat", now=now)
    session.add(daemon)
    return daemon


def record_config_applied(session: Session, msg: ConfigApplied, *, now: datetime) -> Daemon:
    daemon = get_or_register(session, msg.name)
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


def mark_silent_daemons_offline(session: Session, *, now: datetime, offline_after: float) -> list[str]:
    """Daemons whose last heartbeat is older than ``offline_after`` seconds go offline."""
    cutoff = now - timedelta(seconds=offline_after)
    changed: list[str] = []
    candidates = session.exec(select(Daemon).where(col(Daemon.status) != DaemonStatus.OFFLINE))
    for daemon in candidates:
        if daemon.status is DaemonStatus.UNKNOWN and daemon.last_heartbeat_at is None:
            continue
        if daemon.last_heartbeat_at is None or daemon.last_heartbeat_at < cutoff:
            silent = (
                "never"
                if daemon.last_heartbeat_at is None
                else f"{(now - daemon.last_heartbeat_at).total_seconds():.0f}s ago"
            )
            set_status(session, daemon, DaemonStatus.OFFLINE, reason=f"last heartbeat {silent}", now=now)
            changed.append(daemon.name)
    return changed


def record_rejected_message(
    session: Session, *, task: str, daemon: str | None, reason: str, now: datetime
) -> None:
    session.add(DaemonEvent(at=now, daemon=daemon, kind="message_rejected", reason=f"{task}: {reason}"))


def stale_config_daemons(session: Session, *, now: datetime, repush_after: float) -> list[Daemon]:
    """Online daemons whose applied config lags the desired one and were not pushed recently."""
    cutoff = now - timedelta(seconds=repush_after)
    out = []
    for daemon in session.exec(select(Daemon).where(col(Daemon.status) == DaemonStatus.ONLINE)):
        if daemon.desired_config_version is None:
            continue
        if daemon.applied_config_version == daemon.desired_config_version:
            continue
        if daemon.config_pushed_at is not None and daemon.config_pushed_at > cutoff:
            continue
        out.append(daemon)
    return out
