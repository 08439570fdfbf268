"""Run rows through their life: created (one per fire), queued (outbox first), started, finished,
retried. Every function takes the session and ``now``; the caller commits, then publishes."""

from __future__ import annotations

import logging
import random
import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from cp.config_store import pipeline_spec
from cp.db import take_dispatch_turn
from cp.dispatch import Outgoing, run_job_message
from cp.event_order import ignore_reason, newest_seq
from cp.models import ACTIVE_RUN_STATES, DaemonEvent, Pipeline, Run, RunAttempt, RunState, RunTrigger
from cp.placement import choose_daemon
from cp.protocol import RunEvent
from cp.retry import retry_delay
from cp.run_history import MOVED as MOVED_STATE
from cp.run_history import RETRYING, note_change

log = logging.getLogger(__name__)
WAITING_FOR_DAEMON = "waiting: no online daemon matches the pipeline's placement"


class UnknownPipelineError(LookupError):
    pass


class RunNotCancellableError(ValueError):
    pass


def run_key_for(pipeline: str, *, trigger: RunTrigger, scheduled_for: datetime | None) -> str:
    """Scheduled runs are keyed by fire time, so a fire can exist only once."""
    if trigger is RunTrigger.SCHEDULE:
        assert scheduled_for is not None
        return f"{pipeline}@{scheduled_for.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return f"{pipeline}@manual-{uuid.uuid4().hex[:12]}"


def task_id_for(run_key: str, attempt: int) -> str:
    """The Celery task id of one attempt: the run key itself for the first."""
    return run_key if attempt == 1 else f"{run_key}#{attempt}"


def get_pipeline(session: Session, name: str) -> Pipeline:
    pipeline = session.exec(select(Pipeline).where(Pipeline.name == name)).first()
    if pipeline is None:
        raise UnknownPipelineError(f"unknown pipeline {name!r}")
    return pipeline


def get_run(session: Session, run_key: str) -> Run | None:
    return session.exec(select(Run).where(Run.run_key == run_key)).first()


def lock_run(session: Session, run_key: str) -> Run | None:
    """The run, read fresh and locked until the transaction ends.

    SELECT ... FOR UPDATE on PostgreSQL; SQLite ignores it, but its BEGIN IMMEDIATE (cp/db.py) puts
    this first read inside the write lock already.
    """
    locked = select(Run).where(Run.run_key == run_key).with_for_update()
    return session.exec(locked.execution_options(populate_existing=True)).first()


def create_run(
    session: Session,
    pipeline: Pipeline,
    *,
    trigger: RunTrigger,
    now: datetime,
    scheduled_for: datetime | None = None,
    skipped_because: str | None = None,
) -> Run | None:
    """Insert a ``scheduled`` run (or a finished ``skipped`` one); None if that fire has a run already."""
    key = run_key_for(pipeline.name, trigger=trigger, scheduled_for=scheduled_for)
    run = Run(
        run_key=key,
        pipeline=pipeline.name,
        trigger=trigger,
        scheduled_for=scheduled_for,
        state=RunState.SKIPPED if skipped_because else RunState.SCHEDULED,
        created_at=now,
        finished_at=now if skipped_because else None,
        error=skipped_because,
    )
    try:
        with session.begin_nested():
            session.add(run)
    except IntegrityError:
        log.info("run %s exists already; not creating it again", key)
        return None
    why = skipped_because or ("scheduled fire" if trigger is RunTrigger.SCHEDULE else "manual run")
    note_change(session, run, run.state, at=now, reason=why, from_state=None)
    return run


def queue_run(
    session: Session, run: Run, pipeline: Pipeline, *, now: datetime, expires: float
) -> Outgoing | None:
    """Place a scheduled run on a daemon and mark it queued; return the job message to publish.

    None when the pipeline has as many active runs as its overlap policy allows or no daemon is
    available (the run keeps waiting, with the reason shown, and beat queues it later), or when
    another scheduler claimed the run first: the claim is one conditional UPDATE, so two beats
    cannot both queue it.
    """
    take_dispatch_turn(session)
    if active_runs(session, pipeline.name) >= run_capacity(pipeline):
        _wait(session, run, waiting_for_room(pipeline))
        return None
    daemon = choose_daemon(session, pipeline)
    if daemon is None:
        _wait(session, run, WAITING_FOR_DAEMON)
        return None
    task_id = task_id_for(run.run_key, run.attempt)
    claimed = session.exec(
        update(Run)
        .where(col(Run.id) == run.id, col(Run.state) == RunState.SCHEDULED, col(Run.attempt) == run.attempt)
        .values(state=RunState.QUEUED, daemon=daemon, task_id=task_id, queued_at=now, error=None)
    )
    if claimed.rowcount != 1:
        return None
    session.refresh(run)
    session.add(
        RunAttempt(run_key=run.run_key, attempt=run.attempt, daemon=daemon, task_id=task_id, queued_at=now)
    )
    note_change(
        session, run, RunState.QUEUED, at=now, reason=f"on daemon {daemon}", from_state=RunState.SCHEDULED
    )
    return job_message(session, run, pipeline, expires=expires)


def run_capacity(pipeline: Pipeline) -> int:
    """How many runs of the pipeline may be queued or running at once."""
    return pipeline.max_active_runs if pipeline.overlap == "allow" else 1


def active_runs(session: Session, pipeline: str) -> int:
    active = col(Run.state).in_(ACTIVE_RUN_STATES)
    return session.exec(select(func.count()).select_from(Run).where(Run.pipeline == pipeline, active)).one()


def waiting_for_room(pipeline: Pipeline) -> str:
    if pipeline.overlap == "allow":
        return f"waiting: {pipeline.max_active_runs} run(s) of the pipeline are active (max_active_runs)"
    return f"waiting: the pipeline's previous run is still active (overlap: {pipeline.overlap})"


def _wait(session: Session, run: Run, reason: str) -> None:
    if run.error != reason:
        run.error = reason
        session.add(run)


def job_message(session: Session, run: Run, pipeline: Pipeline, *, expires: float) -> Outgoing:
    assert run.daemon is not None and run.task_id is not None
    return run_job_message(
        daemon=run.daemon,
        run_key=run.run_key,
        task_id=run.task_id,
        attempt=run.attempt,
        pipeline=pipeline_spec(session, pipeline),
        cursor=None,
        expires=expires,
        max_attempts=pipeline.max_attempts,
        timeout_seconds=pipeline.timeout,
    )


def mark_published(session: Session, run_keys: list[str], *, now: datetime) -> None:
    if run_keys:
        session.exec(update(Run).where(col(Run.run_key).in_(run_keys)).values(published_at=now))


def mark_unpublished(session: Session, run_key: str, *, error: str, now: datetime) -> None:
    """A manual run whose job could not be published fails at once instead of waiting unseen."""
    run = session.exec(select(Run).where(Run.run_key == run_key)).one()
    if run.state is RunState.QUEUED:
        finish(session, run, RunState.FAILED, error=error, at=now)


def request_cancel(session: Session, run_key: str, *, now: datetime) -> Run:
    """Cancel a waiting or queued run at once; ask a running one to stop between batches.

    The caller then revokes the run's task id so the daemon skips or stops it.
    """
    run = get_run(session, run_key)
    if run is None:
        raise RunNotCancellableError(f"unknown run {run_key!r}")
    if run.state.finished:
        raise RunNotCancellableError(f"run {run_key} already finished ({run.state})")
    run.cancel_requested_at = now
    if run.state in (RunState.QUEUED, RunState.SCHEDULED):
        finish(session, run, RunState.CANCELLED, error="cancelled before it started", at=now)
    session.add(run)
    return run


def finish(session: Session, run: Run, state: RunState, *, error: str | None, at: datetime) -> None:
    outcome = error or f"{run.rows_read} rows read, {run.rows_written} written"
    note_change(session, run, state, at=at, reason=outcome, from_state=run.state)
    run.state, run.finished_at, run.error = state, at, error
    _close_attempt(session, run, state, error=error, at=at)
    session.add(run)


def fail_or_retry(
    session: Session,
    run: Run,
    state: RunState,
    *,
    error: str | None,
    retryable: bool,
    at: datetime,
    rng: random.Random,
    immediately: bool = False,
) -> None:
    """End the current attempt; schedule the next one if the error allows it and attempts remain.

    ``immediately`` skips the backoff: for a run lost with its daemon, the job itself did nothing wrong.
    """
    pipeline = session.exec(select(Pipeline).where(Pipeline.name == run.pipeline)).first()
    max_attempts = pipeline.max_attempts if pipeline else 1
    run.error_retryable = retryable
    tries = run.attempt - _moves(session, run)
    if not retryable or tries >= max_attempts or pipeline is None:
        finish(session, run, state, error=error, at=at)
        return
    _close_attempt(session, run, state, error=error, at=at)
    delay = (
        0.0
        if immediately
        else retry_delay(
            tries, backoff=pipeline.retry_backoff, max_backoff=pipeline.retry_backoff_max, rng=rng
        )
    )
    log.info("run %s attempt %d %s; retrying in %.1fs", run.run_key, run.attempt, state, delay)
    why = f"attempt {run.attempt} {state}: {error}; attempt {run.attempt + 1} in {delay:.0f}s"
    note_change(session, run, RETRYING, at=at, reason=why, from_state=run.state)
    run.attempt += 1
    run.last_event_seq = run.unlisted_since = None
    run.state = RunState.SCHEDULED
    run.next_attempt_at = at + timedelta(seconds=delay)
    run.daemon = run.task_id = run.published_at = run.started_at = None
    run.rows_read = run.rows_written = 0
    run.error = f"attempt {run.attempt - 1} {state}: {error}; attempt {run.attempt} in {delay:.0f}s"
    session.add(run)


def move_to_another_daemon(session: Session, run: Run, *, reason: str, at: datetime) -> None:
    """A queued run whose daemon is gone goes back to ``scheduled`` under a new task id.

    The new id (a new attempt, not counted as a try against ``max_attempts``) keeps the stale
    message in the old daemon's queue from being mistaken for the moved run, should that daemon
    return.
    """
    _close_attempt(session, run, RunState.LOST, error=f"{MOVED}{reason}", at=at)
    note_change(session, run, MOVED_STATE, at=at, reason=reason, from_state=run.state)
    run.attempt += 1
    run.rows_read = run.rows_written = 0  # counted in the moved attempt's row now
    run.last_event_seq = run.unlisted_since = None
    run.state = RunState.SCHEDULED
    run.daemon = run.task_id = run.published_at = None
    run.next_attempt_at = None
    run.error = f"moved: {reason}; waiting for another daemon"
    session.add(run)


MOVED = "moved: "  # how a moved run's attempt ends: the attempt never ran, so it is not a try


def _moves(session: Session, run: Run) -> int:
    """The run's attempts that ended moved to another daemon before they started."""
    moved = select(func.count()).where(
        RunAttempt.run_key == run.run_key, col(RunAttempt.error).startswith(MOVED)
    )
    return session.exec(moved).one()


def _close_attempt(session: Session, run: Run, state: RunState, *, error: str | None, at: datetime) -> None:
    attempt = _current_attempt(session, run)
    if attempt is not None and not attempt.state.finished:
        attempt.state, attempt.finished_at, attempt.error = state, at, error
        attempt.rows_read, attempt.rows_written = run.rows_read, run.rows_written
        attempt.started_at = attempt.started_at or run.started_at
        session.add(attempt)


def record_run_event(
    session: Session, event: RunEvent, *, now: datetime, rng: random.Random | None = None
) -> bool:
    """Apply a daemon's report to its run; returns False when the event was ignored.

    Idempotent and ordered (cp/event_order.py): the run row stays locked until the caller commits,
    so events handled at once apply one after the other, and a stale one changes nothing.
    """
    run = lock_run(session, event.run_key)
    if run is None:
        log.warning("run event %s for unknown run %s ignored", event.state, event.run_key)
        return False
    why = ignore_reason(state=run.state, attempt=run.attempt, last_seq=run.last_event_seq, event=event)
    if why is not None:
        log.info("run event %s (seq %s) for %s ignored: %s", event.state, event.seq, run.run_key, why)
        return False
    if run.daemon != event.daemon:
        # a daemon speaks only for the runs placed on it (docs/security.md)
        reason = f"{event.daemon} sent {event.state} for run {run.run_key}, which is placed on {run.daemon}"
        log.error("refused run event: %s", reason)
        session.add(
            DaemonEvent(at=now, daemon=event.daemon, kind="security", reason=f"cp.run_event: {reason}")
        )
        return False
    run.last_event_seq = newest_seq(run.last_event_seq, event)
    run.rows_read = max(run.rows_read, event.rows_read)
    run.rows_written = max(run.rows_written, event.rows_written)
    if event.cursor is not None:
        run.cursor_after = event.cursor
    if event.state == "started":
        _started(session, run, event)
    elif event.state == "progress":
        if run.state is RunState.QUEUED:
            # its "started" is late or lost: the attempt runs all the same
            _now_running(session, run, at=event.at, attempt=_current_attempt(session, run))
    elif event.state == "succeeded":
        run.started_at = run.started_at or event.at
        finish(session, run, RunState.SUCCEEDED, error=None, at=event.at)
    elif event.state == "cancelled":
        finish(session, run, RunState.CANCELLED, error=event.error, at=event.at)
    else:
        run.started_at = run.started_at or event.at
        fail_or_retry(
            session,
            run,
            RunState.TIMED_OUT if event.state == "timed_out" else RunState.FAILED,
            error=event.error,
            retryable=event.retryable,
            at=event.at,
            rng=rng or random.Random(),
        )
    session.add(run)
    return True


def _started(session: Session, run: Run, event: RunEvent) -> None:
    """Each ``started`` is one delivery of the job: counted, so a redelivery loop is visible in SQL."""
    run.deliveries += 1
    attempt = _current_attempt(session, run)
    if run.state in (RunState.QUEUED, RunState.SCHEDULED):
        run.error = None
        _now_running(session, run, at=event.at, attempt=attempt)
    if attempt is not None:
        attempt.deliveries += 1
        session.add(attempt)


def _now_running(session: Session, run: Run, *, at: datetime, attempt: RunAttempt | None) -> None:
    note_change(session, run, RunState.RUNNING, at=at, reason=f"on daemon {run.daemon}", from_state=run.state)
    run.state, run.started_at = RunState.RUNNING, at
    if attempt is not None and not attempt.state.finished:
        attempt.state = RunState.RUNNING
        attempt.started_at = attempt.started_at or at
        session.add(attempt)


def _current_attempt(session: Session, run: Run) -> RunAttempt | None:
    return session.exec(
        select(RunAttempt).where(RunAttempt.run_key == run.run_key, RunAttempt.attempt == run.attempt)
    ).first()
