"""Control-plane Celery tasks: each validates its payload, calls the core, records the outcome."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from celery import Celery, Task
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, select

from cp.alerts.delivery_task import register_delivery_task
from cp.alerts.evaluator import evaluate_alerts
from cp.alerts.queue_age import oldest_ages
from cp.config_requests import answer_config_request
from cp.config_store import current_push
from cp.db_errors import describe, is_transient
from cp.dispatch import enrolled_message, probe_message
from cp.failover import fail_over, fail_runs_of_earlier_process, reconcile_heartbeats
from cp.health import (
    HealthLimits,
    record_config_applied,
    record_heartbeats,
    record_hello,
    record_probe_reply,
    record_probe_sent,
    record_rejected_message,
    stale_config_daemons,
    update_statuses,
)
from cp.heartbeat_intake import HeartbeatIntake
from cp.heartbeats import Flusher, HeartbeatCoalescer, ReceivedHeartbeat
from cp.liveness import WORKER, ProcessIdentity, forget_old, note_health_check, note_seen, note_stopped
from cp.logs.acks import LogAcks
from cp.logs.ingest import record_dropped, store_batch
from cp.messaging.broker_client import broker_client
from cp.messaging.checked_request import CheckedBodyRequest
from cp.messaging.cp_events import database_sink, event_reason
from cp.messaging.install import guard_of
from cp.messaging.recorder import TokenBucket
from cp.metrics.worker_counters import install_worker_counters
from cp.models import Daemon, DaemonKey, DaemonStatus, utcnow
from cp.protocol import (
    CP_CHECK_DAEMON_HEALTH,
    CP_CONFIG_APPLIED,
    CP_CONFIG_REQUEST,
    CP_DAEMON_HELLO,
    CP_ENROLL,
    CP_EVALUATE_ALERTS,
    CP_HEARTBEAT,
    CP_LOGS,
    CP_MESSAGE_REJECTED,
    CP_PROBE_REPLY,
    CP_PURGE_OLD_RECORDS,
    CP_QUEUE,
    CP_RUN_EVENT,
    CP_SEND_PROBES,
    ConfigApplied,
    ConfigRequest,
    DaemonEnroll,
    DaemonHello,
    Heartbeat,
    LogBatch,
    MessageError,
    MessageRejected,
    ProbeReply,
    RunEvent,
    parse,
)
from cp.queue_depth import queue_depths
from cp.retention import RetentionPolicy, purge_old_records
from cp.runs import record_run_event
from cp.runtime import ControlPlane
from cp.security.cp_auth import ControlPlaneAuthenticator, DaemonKeys, DaemonKeyView, Nonces
from cp.security.cp_keys import ControlPlaneKeys
from cp.security.enrolment import EnrolmentRefused, enroll
from cp.security.keys import public_key_from_text
from cp.undeclared import RecentNames, record_undeclared

log = logging.getLogger(__name__)
_rng = random.Random()
M = TypeVar("M", bound=BaseModel)
MAX_RETRIES = 8  # of a task whose database was unavailable
RETRY_BACKOFF_MAX = 30  # seconds between two attempts, at most
QUEUE_DEPTH_EVERY = 5.0  # seconds between two readings of every daemon queue's depth


def register_cp_tasks(app: Celery, cp: ControlPlane) -> None:
    """Register every ``cp.*`` task on ``app``."""
    settings = cp.settings
    undeclared_recently = RecentNames(
        capacity=settings.undeclared_daemons_max, interval=settings.undeclared_record_interval
    )
    guard = guard_of(app)
    guard.record_with(database_sink(cp))
    install_worker_counters(app, guard, settings)
    cp_keys = ControlPlaneKeys(settings.home)
    cp_keys.current()  # made on the first start of a control-plane process, if there is none

    def key_view(row: DaemonKey) -> DaemonKeyView:
        return DaemonKeyView(
            key_id=row.key_id, public=public_key_from_text(row.public_key), revoked=row.revoked_at is not None
        )

    def load_daemon_key(name: str) -> DaemonKeyView | None:
        with cp.session() as session:
            row = session.exec(select(DaemonKey).where(DaemonKey.name == name)).first()
            return key_view(row) if row is not None else None

    def load_daemon_keys() -> dict[str, DaemonKeyView]:
        with cp.session() as session:
            return {row.name: key_view(row) for row in session.exec(select(DaemonKey))}

    daemon_keys = DaemonKeys(load_daemon_key, ttl=settings.key_cache_seconds)
    keys_read_at = [float("-inf")]

    def refresh_daemon_keys() -> None:
        """Every daemon's key in one query, at most every key_cache_seconds, before a heartbeat flush."""
        now = time.monotonic()
        if now - keys_read_at[0] >= settings.key_cache_seconds:
            daemon_keys.refresh(load_daemon_keys())
            keys_read_at[0] = now

    authenticator = ControlPlaneAuthenticator(
        daemon_keys=daemon_keys,
        cp_keys=cp_keys.trusted,
        nonces=Nonces(),
        window_s=settings.replay_window,
        daemon_queues=frozenset({CP_QUEUE}),
    )
    guard.authenticator = authenticator
    register_delivery_task(app, cp)

    def reject(name: str, *, sender: object, reason: str, kind: str = "message_rejected") -> None:
        """Log once and record a message taken off the queue unprocessed; never raises."""
        log.error("rejected %s message: %s", name, reason)
        guard.count_refused(name, kind)
        try:
            with cp.session() as session:
                record_rejected_message(
                    session,
                    task=name,
                    daemon=sender if isinstance(sender, str) else None,
                    reason=reason,
                    now=utcnow(),
                    kind=kind,
                )
        except SQLAlchemyError as exc:
            log.error("could not record the rejected %s message: %s", name, describe(exc))

    def contract_task(
        name: str, model: type[M], *, acks_late: bool = True, send_events: bool = True
    ) -> Callable[[Callable[[M], None]], None]:
        """A task that takes one payload, validates it, and rejects bad ones without crashing.

        A database error is retried only when the database could not do the work now (see
        cp/db_errors.py); one caused by the message itself is rejected once, never retried.
        """

        def decorate(handler: Callable[[M], None]) -> None:
            def task(self: Task, *args: Any, **kwargs: Any) -> None:  # type: ignore[type-arg]
                payload = args[0] if len(args) == 1 and not kwargs else {"args": args, "kwargs": kwargs}
                try:
                    message = parse(model, payload)
                except MessageError as exc:
                    sender = payload.get("name") if isinstance(payload, dict) else None
                    reject(name, sender=sender, reason=str(exc))
                    return
                try:
                    handler(message)
                except SQLAlchemyError as exc:
                    if not is_transient(exc):
                        sender = getattr(message, "name", None) or getattr(message, "daemon", None)
                        reject(name, sender=sender, reason=f"data error: {describe(exc)}")
                        return
                    # exponential backoff with full jitter, so workers do not come back in step
                    countdown = _rng.uniform(0, min(RETRY_BACKOFF_MAX, 2.0**self.request.retries))
                    retry = self.retry  # celery leaves it untyped
                    raise retry(exc=exc, countdown=countdown, max_retries=MAX_RETRIES) from exc

            app.task(
                name=name,
                bind=True,
                shared=False,
                ignore_result=True,
                acks_late=acks_late,
                send_events=send_events,
                Request=CheckedBodyRequest,
            )(task)

        return decorate

    running: dict[str, threading.Lock] = {
        name: threading.Lock()
        for name in (CP_SEND_PROBES, CP_CHECK_DAEMON_HEALTH, CP_PURGE_OLD_RECORDS, CP_EVALUATE_ALERTS)
    }

    depths_due = [0.0]  # monotonic time of the next queue-depth reading in this process

    def alone(name: str, step: Callable[[], None]) -> None:
        """Run ``step`` unless the previous run of ``name`` in this process is still going.

        Overlapping runs would only wait for each other's database lock, holding worker threads
        that heartbeats and the next check need; the next beat tick does the work instead.
        """
        lock = running[name]
        if not lock.acquire(blocking=False):
            log.info("%s skipped: the previous one is still running", name)
            return
        try:
            step()
        finally:
            lock.release()

    coalescer = HeartbeatCoalescer(max_daemons=settings.heartbeat_pending_max)

    def write_heartbeats(batch: list[ReceivedHeartbeat]) -> None:
        now = utcnow()
        with cp.session() as session:
            written = record_heartbeats(session, batch)
            # each daemon's newest heartbeat squares the runs it reports with those recorded
            revoke = reconcile_heartbeats(
                session, [r.beat for r in written.applied], now=now, grace=settings.reconcile_grace, rng=_rng
            )
            noted = [r.beat.name for r in written.undeclared if undeclared_recently.due(r.beat.name, now=now)]
            for name in noted:
                record_undeclared(
                    session,
                    name=name,
                    now=now,
                    interval=settings.undeclared_record_interval,
                    keep=settings.undeclared_daemons_max,
                    via="heartbeat",
                )
        undeclared_recently.remember(noted, now=now)
        if revoke:
            cp.app.control.revoke(revoke)

    def declared_names() -> list[str]:
        with cp.session() as session:
            return list(session.exec(select(Daemon.name)))

    # daemons write their heartbeats to keys of their own (cp/heartbeat_keys.py); the task below
    # stays for a broker without keys and for daemons of an earlier release
    intake = HeartbeatIntake(
        connect=lambda: broker_client(cp.app),
        declared_names=declared_names,
        lease_seconds=max(2.0, 4 * settings.heartbeat_flush_interval),
        verify=authenticator.verify_heartbeat,
    )

    per_second = settings.rejection_events_per_second
    key_rejections = TokenBucket(rate=per_second, burst=max(1.0, 10 * per_second))

    def flush_heartbeats() -> None:
        try:
            refresh_daemon_keys()
        except SQLAlchemyError as exc:  # the keys read one by one then, the database permitting
            log.warning("could not read the daemons' keys: %s", describe(exc))
        from_keys, rejected = intake.gather()
        for received_beat in from_keys:
            coalescer.offer(received_beat)
        for bad in rejected:
            # a daemon rewriting a bad key as fast as it can must not flood the event table
            if key_rejections.take():
                reject(CP_HEARTBEAT, sender=bad.name, reason=bad.reason, kind=bad.kind)
            else:
                log.warning(
                    "rejected heartbeat key of %s (over the rate, not recorded): %s", bad.name, bad.reason
                )
        batch, dropped = coalescer.take()
        if dropped:
            limit = settings.heartbeat_pending_max
            log.warning("dropped %s heartbeats: over %s daemons waiting", dropped, limit)
        if not batch:
            return
        try:
            write_heartbeats(batch)
            return
        except SQLAlchemyError as exc:
            if is_transient(exc):
                log.warning("%s heartbeats kept for the next flush: %s", len(batch), describe(exc))
                coalescer.give_back(batch)
                return
        # one heartbeat's data made the batch fail: write them one by one, so only it is lost
        for received in batch:
            try:
                write_heartbeats([received])
            except SQLAlchemyError as exc:
                if is_transient(exc):
                    coalescer.give_back([received])
                else:
                    reject(CP_HEARTBEAT, sender=received.beat.name, reason=f"data error: {describe(exc)}")

    flusher = Flusher(flush_heartbeats, interval=settings.heartbeat_flush_interval)
    worker_ready.connect(lambda **_: flusher.ensure_running(), weak=False)
    this_worker = ProcessIdentity(WORKER)

    def note_alive() -> None:
        try:
            with cp.session() as session:
                note_seen(session, this_worker, now=utcnow())
        except SQLAlchemyError as exc:  # the database is away: the next interval tries again
            log.warning("could not note this worker alive: %s", describe(exc))

    liveness = Flusher(note_alive, interval=settings.liveness_interval, name="liveness")

    def start_liveness(**_: object) -> None:
        note_alive()  # seen at once, not one interval later
        try:
            with cp.session() as session:
                forget_old(session, now=utcnow())
        except SQLAlchemyError as exc:
            log.warning("could not forget long-gone processes: %s", describe(exc))
        liveness.ensure_running()

    worker_ready.connect(start_liveness, weak=False)

    def stop_heartbeats(**_: object) -> None:
        flusher.stop()
        intake.close()
        liveness.stop()
        try:
            with cp.session() as session:
                note_stopped(session, this_worker, now=utcnow())
        except SQLAlchemyError as exc:
            log.warning("could not note this worker stopped: %s", describe(exc))

    worker_shutdown.connect(stop_heartbeats, weak=False)
    worker_process_shutdown.connect(lambda **_: flusher.stop(), weak=False)

    def note_undeclared(hello: DaemonHello, *, now: datetime) -> None:
        if not undeclared_recently.due(hello.name, now=now):
            return
        with cp.session() as session:
            record_undeclared(
                session,
                name=hello.name,
                now=now,
                interval=settings.undeclared_record_interval,
                keep=settings.undeclared_daemons_max,
                via="hello",
                hostname=hello.hostname,
                software_version=hello.software_version,
            )
        undeclared_recently.remember([hello.name], now=now)

    @contract_task(CP_DAEMON_HELLO, DaemonHello)
    def daemon_hello(hello: DaemonHello) -> None:
        now = utcnow()
        with cp.session() as session:
            daemon = record_hello(session, hello, now=now)
            if daemon is None:
                undeclared = True
            else:
                undeclared = False
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
        if undeclared:
            note_undeclared(hello, now=now)
            return
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

    # acknowledged on receipt and kept in memory until the next flush (cp/heartbeats.py)
    @contract_task(CP_HEARTBEAT, Heartbeat, acks_late=False, send_events=False)
    def heartbeat(beat: Heartbeat) -> None:
        coalescer.offer(ReceivedHeartbeat(beat=beat, received_at=utcnow()))
        flusher.ensure_running()

    @contract_task(CP_RUN_EVENT, RunEvent)
    def run_event(event: RunEvent) -> None:
        with cp.session() as session:
            record_run_event(session, event, now=utcnow())

    log_acks = LogAcks(lambda: broker_client(cp.app))

    # housekeeping, out of Flower's list; acknowledged once stored, so the daemon lets go of them
    @contract_task(CP_LOGS, LogBatch, send_events=False)
    def logs(batch: LogBatch) -> None:
        with cp.session() as session:
            store_batch(session, batch)
            if batch.dropped:
                record_dropped(session, batch, now=utcnow())
        log_acks.acknowledge(batch.name, batch.last_seq)

    @contract_task(CP_CONFIG_APPLIED, ConfigApplied)
    def config_applied(msg: ConfigApplied) -> None:
        with cp.session() as session:
            record_config_applied(session, msg, now=utcnow())

    @contract_task(CP_CONFIG_REQUEST, ConfigRequest)
    def config_request(request: ConfigRequest) -> None:
        with cp.session() as session:
            push = answer_config_request(session, request, now=utcnow())
        if push is not None:
            log.info("daemon %s asked for its config again: pushing version %s", request.name, push.version)
            cp.push_configs([push])

    @contract_task(CP_MESSAGE_REJECTED, MessageRejected, send_events=False)
    def message_rejected(report: MessageRejected) -> None:
        reason = event_reason(queue=report.queue, reason=report.reason, suppressed=report.suppressed)
        with cp.session() as session:
            record_rejected_message(
                session,
                task=report.task or "<no task>",
                daemon=report.name,
                reason=reason,
                now=utcnow(),
                kind=report.kind,
            )

    @contract_task(CP_ENROLL, DaemonEnroll)
    def enroll_daemon(request: DaemonEnroll) -> None:
        now = utcnow()
        try:
            with cp.session() as session:
                enrolled = enroll(session, request, now=now)
        except EnrolmentRefused as exc:
            log.error("refused: %s", exc)
            with cp.session() as session:
                record_rejected_message(
                    session, task=CP_ENROLL, daemon=None, reason=str(exc), now=now, kind="security"
                )
            return
        log.info("daemon %s enrolled with key %s", enrolled.name, enrolled.key_id)
        # the daemon says hello again: its first hello may have been handled before this
        cp.dispatcher.send(
            enrolled_message(enrolled.name, key_id=enrolled.key_id, expires=settings.apply_config_expires)
        )

    @app.task(name=CP_PURGE_OLD_RECORDS, shared=False, ignore_result=True, send_events=False)
    def purge_old_records_task() -> None:
        alone(CP_PURGE_OLD_RECORDS, _purge_old_records)

    def _purge_old_records() -> None:
        policy = RetentionPolicy.from_settings(settings)
        deleted = purge_old_records(cp.session, now=utcnow(), policy=policy)
        log.info("retention: deleted %s", deleted)

    @app.task(name=CP_EVALUATE_ALERTS, shared=False, ignore_result=True, send_events=False)
    def evaluate_alerts_task() -> None:
        alone(CP_EVALUATE_ALERTS, _evaluate_alerts)

    def _evaluate_alerts() -> None:
        with cp.session() as session:
            evaluate_alerts(
                session,
                now=utcnow(),
                limits=HealthLimits.from_settings(settings),
                oldest_ages=lambda names: oldest_ages(cp.app, names, now=utcnow()),
            )

    @contract_task(CP_PROBE_REPLY, ProbeReply, send_events=False)
    def probe_reply(reply: ProbeReply) -> None:
        with cp.session() as session:
            record_probe_reply(session, reply, now=utcnow())

    @app.task(name=CP_SEND_PROBES, shared=False, ignore_result=True, send_events=False)
    def send_probes() -> None:
        alone(CP_SEND_PROBES, _send_probes)

    def _send_probes() -> None:
        """A canary through each declared daemon's own queue: only a consuming daemon answers it."""
        now = utcnow()
        probe_id = uuid.uuid4().hex[:12]
        with cp.session() as session:
            query = select(Daemon).where(col(Daemon.declared).is_(True))
            daemons = [d for d in session.exec(query) if d.status is not DaemonStatus.OFFLINE]
            for daemon in daemons:
                record_probe_sent(session, daemon, probe_id=probe_id, now=now)
            names = [d.name for d in daemons]
        for name in names:
            cp.dispatcher.send(
                probe_message(name, probe_id=probe_id, sent_at=now, expires=cp.settings.probe_interval)
            )

    @app.task(name=CP_CHECK_DAEMON_HEALTH, shared=False, ignore_result=True, send_events=False)
    def check_daemon_health() -> None:
        alone(CP_CHECK_DAEMON_HEALTH, _check_daemon_health)

    def _check_daemon_health() -> None:
        """Queue depths, statuses, failover of offline daemons' runs, re-push of lagging configs."""
        now = utcnow()
        limits = HealthLimits.from_settings(settings)
        depths: dict[str, int] | None = None
        if time.monotonic() >= depths_due[0]:
            # the backlog rule needs no fresher figures, and reading every queue costs the most
            depths_due[0] = time.monotonic() + QUEUE_DEPTH_EVERY
            with cp.session() as session:
                names = list(session.exec(select(Daemon.name)))
            depths = queue_depths(cp.app, names)
        with cp.session() as session:
            if depths is not None:
                for daemon in session.exec(select(Daemon)):
                    if daemon.queue_depth != depths.get(daemon.name):
                        daemon.queue_depth = depths.get(daemon.name)
                        session.add(daemon)
            update_statuses(session, now=now, limits=limits, listening_since=cp.consuming_since)
            revoke = fail_over(session, now=now, lost_after=settings.lost_after, rng=_rng)
            pushes = [
                push
                for daemon in stale_config_daemons(session, now=now, repush_after=settings.offline_after)
                if (push := current_push(session, daemon)) is not None
            ]
            # last, so the one row every check writes is locked only until the commit
            note_health_check(session, this_worker, now=now)  # views show statuses stale without it
        if revoke:
            cp.app.control.revoke(revoke)
        cp.push_configs(pushes)
