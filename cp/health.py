"""Daemon registration, heartbeats and status transitions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from cp.models import Daemon, DaemonEvent, DaemonStatus
from cp.protocol import ConfigApplied, DaemonHello, Heartbeat, ProbeReply

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
    if daemon.status in (DaemonStatus.OFFLINE, DaemonStatus.UNKNOWN):
        # back: heartbeats prove the process runs; the probe check decides online vs degraded
        set_status(session, daemon, DaemonStatus.ONLINE, reason="heartbeat", now=now)
    session.add(daemon)
    return daemon


@dataclass(frozen=True)
class HealthLimits:
    offline_after: float  # seconds without a heartbeat
    probe_timeout: float  # seconds a canary probe may stay unanswered
    backlog_threshold: int  # messages waiting in the daemon's queue


def evaluate(
    daemon: Daemon, *, now: datetime, limits: HealthLimits, listening_since: datetime | None = None
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
    """Re-evaluate every daemon; return those that went offline in this call."""
    went_offline = []
    for daemon in session.exec(select(Daemon)):
        status, reason = evaluate(daemon, now=now, limits=limits, listening_since=listening_since)
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


def record_probe_reply(session: Session, reply: ProbeReply, *, now: datetime) -> Daemon:
    daemon = get_or_register(session, reply.name)
    daemon.last_probe_reply_at = now
    daemon.last_probe_rtt_ms = round((now - reply.sent_at).total_seconds() * 1000, 1)
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
