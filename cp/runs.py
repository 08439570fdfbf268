"""Run rows: create them (outbox first), and record what daemons report about them."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from cp.config_store import pipeline_spec
from cp.dispatch import Outgoing, run_job_message
from cp.models import Pipeline, Run, RunState, RunTrigger
from cp.placement import choose_daemon
from cp.protocol import RunEvent

log = logging.getLogger(__name__)


class UnknownPipelineError(LookupError):
    pass


def run_key_for(pipeline: str, *, trigger: RunTrigger, scheduled_for: datetime | None) -> str:
    """Scheduled runs are keyed by fire time, so a fire can exist only once."""
    if trigger is RunTrigger.SCHEDULE:
        assert scheduled_for is not None
        return f"{pipeline}@{scheduled_for.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return f"{pipeline}@manual-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class NewRun:
    run: Run
    message: Outgoing | None


def create_run(
    session: Session,
    pipeline: Pipeline,
    *,
    trigger: RunTrigger,
    now: datetime,
    scheduled_for: datetime | None = None,
    expires: float,
) -> NewRun | None:
    """Insert a queued run and build its job message; None if that fire already has a run.

    The caller commits before publishing the message (outbox order).
    """
    key = run_key_for(pipeline.name, trigger=trigger, scheduled_for=scheduled_for)
    daemon = choose_daemon(session, pipeline)
    run = Run(
        run_key=key,
        pipeline=pipeline.name,
        trigger=trigger,
        scheduled_for=scheduled_for,
        daemon=daemon,
        state=RunState.QUEUED,
        created_at=now,
        queued_at=now,
        task_id=key,
        error=None if daemon else "waiting: no online daemon matches the pipeline's labels",
    )
    try:
        with session.begin_nested():
            session.add(run)
    except IntegrityError:
        log.info("run %s exists already; not creating it again", key)
        return None
    if daemon is None:
        return NewRun(run=run, message=None)
    message = run_job_message(
        daemon=daemon,
        run_key=key,
        task_id=key,
        attempt=run.attempt,
        pipeline=pipeline_spec(session, pipeline),
        cursor=None,
        expires=expires,
    )
    return NewRun(run=run, message=message)


FINAL_STATES = {
    "succeeded": RunState.SUCCEEDED,
    "failed": RunState.FAILED,
    "cancelled": RunState.CANCELLED,
}


class RunNotCancellableError(ValueError):
    pass


def request_cancel(session: Session, run_key: str, *, now: datetime) -> Run:
    """Cancel a queued run at once; ask a running one to stop between batches.

    The caller then revokes the run's task id so the daemon skips or stops it.
    """
    run = session.exec(select(Run).where(Run.run_key == run_key)).first()
    if run is None:
        raise RunNotCancellableError(f"unknown run {run_key!r}")
    if run.state.finished:
        raise RunNotCancellableError(f"run {run_key} already finished ({run.state})")
    run.cancel_requested_at = now
    if run.state in (RunState.QUEUED, RunState.SCHEDULED):
        run.state, run.finished_at, run.error = RunState.CANCELLED, now, "cancelled before it started"
    session.add(run)
    return run


def get_pipeline(session: Session, name: str) -> Pipeline:
    pipeline = session.exec(select(Pipeline).where(Pipeline.name == name)).first()
    if pipeline is None:
        raise UnknownPipelineError(f"unknown pipeline {name!r}")
    return pipeline


def record_run_event(session: Session, event: RunEvent, *, now: datetime) -> bool:
    """Apply a daemon's report to its run; returns False when the event was ignored.

    Idempotent: a redelivered or late event never moves a finished run.
    """
    run = session.exec(select(Run).where(Run.run_key == event.run_key)).first()
    if run is None:
        log.warning("run event %s for unknown run %s ignored", event.state, event.run_key)
        return False
    if run.state.finished:
        log.info("run event %s for finished run %s (%s) ignored", event.state, run.run_key, run.state)
        return False
    if run.daemon != event.daemon:
        log.warning(
            "run event for %s from %s, but it is placed on %s",
            run.run_key,
            event.daemon,
            run.daemon,
        )
    run.rows_read = max(run.rows_read, event.rows_read)
    run.rows_written = max(run.rows_written, event.rows_written)
    if event.cursor is not None:
        run.cursor_after = event.cursor
    if event.state in ("started", "progress"):
        if run.state is RunState.QUEUED:
            run.state = RunState.RUNNING
            run.started_at = event.at
            run.error = None
    else:
        run.state = FINAL_STATES[event.state]
        run.started_at = run.started_at or event.at
        run.finished_at = event.at
        run.error = event.error
        run.error_retryable = event.retryable
    session.add(run)
    return True


def mark_unpublished(session: Session, run_key: str, *, error: str, now: datetime) -> None:
    """A manual run whose job could not be published fails at once instead of waiting unseen."""
    run = session.exec(select(Run).where(Run.run_key == run_key)).one()
    if run.state is RunState.QUEUED:
        run.state, run.finished_at, run.error = RunState.FAILED, now, error
        session.add(run)
