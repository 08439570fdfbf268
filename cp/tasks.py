"""Control-plane Celery tasks: each validates its payload, calls the core, records the outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from cp.config_store import current_push
from cp.health import (
    mark_silent_daemons_offline,
    record_config_applied,
    record_heartbeat,
    record_hello,
    record_rejected_message,
    stale_config_daemons,
)
from cp.models import utcnow
from cp.protocol import (
    CP_CHECK_DAEMON_HEALTH,
    CP_CONFIG_APPLIED,
    CP_DAEMON_HELLO,
    CP_HEARTBEAT,
    CP_PURGE_OLD_RECORDS,
    CP_RUN_EVENT,
    ConfigApplied,
    DaemonHello,
    Heartbeat,
    MessageError,
    RunEvent,
    parse,
)
from cp.retention import purge_old_records
from cp.runs import record_run_event
from cp.runtime import ControlPlane

log = logging.getLogger(__name__)
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
        with cp.session() as session:
            daemon = record_hello(session, hello, now=utcnow())
            push = None
            if daemon.desired_config_version != hello.applied_config_version:
                push = current_push(session, daemon)
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

    @app.task(name=CP_CHECK_DAEMON_HEALTH, ignore_result=True)
    def check_daemon_health() -> None:
        """Mark silent daemons offline; re-push configs that online daemons have not applied."""
        now = utcnow()
        with cp.session() as session:
            mark_silent_daemons_offline(session, now=now, offline_after=cp.settings.offline_after)
            pushes = [
                push
                for daemon in stale_config_daemons(session, now=now, repush_after=cp.settings.offline_after)
                if (push := current_push(session, daemon)) is not None
            ]
        cp.push_configs(pushes)
