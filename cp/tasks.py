"""Control-plane Celery tasks: each validates its payload, calls the core, records the outcome."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from cp.config_store import current_push
from cp.dispatch import probe_message
from cp.failover import fail_over, fail_runs_of_earlier_process
from cp.health import (
    HealthLimits,
    record_config_applied,
    record_heartbeat,
    record_hello,
    record_probe_reply,
    record_probe_sent,
    record_rejected_message,
    stale_config_daemons,
    update_statuses,
)
from cp.models import Daemon, DaemonStatus, utcnow
from cp.protocol import (
    CP_CHECK_DAEMON_HEALTH,
    CP_CONFIG_APPLIED,
    CP_DAEMON_HELLO,
    CP_HEARTBEAT,
    CP_PROBE_REPLY,
    CP_PURGE_OLD_RECORDS,
    CP_RUN_EVENT,
    CP_SEND_PROBES,
    ConfigApplied,
    DaemonHello,
    Heartbeat,
    MessageError,
    ProbeReply,
    RunEvent,
    parse,
)
from cp.queue_depth import queue_depths
from cp.retention import purge_old_records
from cp.runs import record_run_event
from cp.runtime import ControlPlane

log = logging.getLogger(__name__)
_rng = random.Random()
M = TypeVar("M", bound=BaseModel)


def register_cp_tasks(app: Celery, cp: ControlPlane) -> None:
    """Register every ``cp.*`` task on ``app``."""

    def contract_task(name: str, model: type[M]) -> Callable[[Callable[[M], None]], None]:
        """A task that takes one payload, validates it, and rejects bad ones without crashing."""

        def decorate(handler: Callable[[M], None]) -> None:
            def task(*args: Any, **kwargs: Any) -> None:
                payload = args[0] if len(args) == 1 and not kwargs else {"args": args, "kwargs": kwargs}
                try:
                    message = parse(model, payload)
                except MessageError as exc:
                    sender = payload.get("name") if isinstance(payload, dict) else None
                    log.error("rejected %s message: %s", name, exc)
                    with cp.session() as session:
                        record_rejected_message(
                            session,
                            task=name,
                            daemon=sender if isinstance(sender, str) else None,
                            reason=str(exc),
                            now=utcnow(),
                        )
                    return
                handler(message)

            app.task(
                name=name,
                ignore_result=True,
                # a locked or briefly unreachable database is retried, not dropped
                autoretry_for=(OperationalError,),
                retry_backoff=True,
                retry_backoff_max=30,
                max_retries=8,
            )(task)

        return decorate

    @contract_task(CP_DAEMON_HELLO, DaemonHello)
    def daemon_hello(hello: DaemonHello) -> None:
        now = utcnow()
        with cp.session() as session:
            daemon = record_hello(session, hello, now=now)
            revoke = []
            if hello.started_at is not None:
                revoke = fail_runs_of_earlier_process(
                    session,
                    daemon=hello.name,
                    started_at=hello.started_at,
                    orphaned_task_ids=hello.orphaned_task_ids,
                    now=now,
                    rng=_rng,
                )
            push = None
            if daemon.desired_config_version != hello.applied_config_version:
                push = current_push(session, daemon)
        if revoke:
            cp.app.control.revoke(revoke)
        if push is not None:
            log.info(
                "daemon %s has config %s, wants %s: pushing",
                hello.name,
                hello.applied_config_version,
                push.version,
            )
            cp.push_configs([push])

    @contract_task(CP_HEARTBEAT, Heartbeat)
    def heartbeat(beat: Heartbeat) -> None:
        with cp.session() as session:
            record_heartbeat(session, beat, now=utcnow())

    @contract_task(CP_RUN_EVENT, RunEvent)
    def run_event(event: RunEvent) -> None:
        with cp.session() as session:
            record_run_event(session, event, now=utcnow())

    @contract_task(CP_CONFIG_APPLIED, ConfigApplied)
    def config_applied(msg: ConfigApplied) -> None:
        with cp.session() as session:
            record_config_applied(session, msg, now=utcnow())

    @app.task(name=CP_PURGE_OLD_RECORDS, ignore_result=True)
    def purge_old_records_task() -> None:
        with cp.session() as session:
            deleted = purge_old_records(session, now=utcnow(), keep_days=cp.settings.retention_days)
        log.info("retention: deleted %s", deleted)

    @contract_task(CP_PROBE_REPLY, ProbeReply)
    def probe_reply(reply: ProbeReply) -> None:
        with cp.session() as session:
            record_probe_reply(session, reply, now=utcnow())

    @app.task(name=CP_SEND_PROBES, ignore_result=True)
    def send_probes() -> None:
        """A canary through each daemon's own queue: only a consuming daemon answers it."""
        now = utcnow()
        probe_id = uuid.uuid4().hex[:12]
        with cp.session() as session:
            daemons = [d for d in session.exec(select(Daemon)) if d.status is not DaemonStatus.OFFLINE]
            for daemon in daemons:
                record_probe_sent(session, daemon, probe_id=probe_id, now=now)
            names = [d.name for d in daemons]
        for name in names:
            cp.dispatcher.send(
                probe_message(name, probe_id=probe_id, sent_at=now, expires=cp.settings.probe_interval)
            )

    @app.task(name=CP_CHECK_DAEMON_HEALTH, ignore_result=True)
    def check_daemon_health() -> None:
        """Queue depths, statuses, failover of offline daemons' runs, re-push of lagging configs."""
        now = utcnow()
        settings = cp.settings
        limits = HealthLimits(
            offline_after=settings.offline_after,
            probe_timeout=settings.probe_timeout,
            backlog_threshold=settings.backlog_threshold,
        )
        with cp.session() as session:
            daemons = list(session.exec(select(Daemon)))
        depths = queue_depths(cp.app, [d.name for d in daemons])
        with cp.session() as session:
            for daemon in session.exec(select(Daemon)):
                daemon.queue_depth = depths.get(daemon.name)
                session.add(daemon)
            update_statuses(session, now=now, limits=limits, listening_since=cp.consuming_since)
            revoke = fail_over(session, now=now, lost_after=settings.lost_after, rng=_rng)
            pushes = [
                push
                for daemon in stale_config_daemons(session, now=now, repush_after=settings.offline_after)
                if (push := current_push(session, daemon)) is not None
            ]
        if revoke:
            cp.app.control.revoke(revoke)
        cp.push_configs(pushes)
