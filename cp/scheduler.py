"""The scheduler's tick as small steps, each a plain function of (session, now).

Beat calls :func:`tick` about once a second; two beats may run it at the same time: run keys are
unique per fire and queuing a run is one conditional UPDATE, so nothing is dispatched twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, update
from sqlalchemy import insert as insert_statement
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, or_, select

from cp.config_store import pipeline_spec
from cp.db import take_dispatch_turn
from cp.dispatch import Outgoing, job_outgoing, job_payload
from cp.models import ACTIVE_RUN_STATES, Pipeline, Run, RunAttempt, RunState, RunTrigger
from cp.placement import Placement
from cp.run_history import change_row, insert_changes
from cp.runs import (
    WAITING_FOR_DAEMON,
    fail_or_retry,
    finish,
    get_run,
    job_message,
    run_capacity,
    run_key_for,
    task_id_for,
    waiting_for_room,
)
from cp.schedule import latest_fires

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 500  # rows per statement: well under SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True)
class TickSettings:
    expires: float  # seconds a job message stays valid in a daemon's queue
    republish_after: float = 5.0  # a queued run whose publish was not confirmed is sent again
    restart_after: float = 300.0  # a published run that never started is sent again
    timeout_grace: float = 30.0  # seconds past a run's timeout before the control plane ends it


@dataclass
class TickResult:
    messages: list[Outgoing] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)  # task ids of runs that timed out


def tick(session: Session, *, now: datetime, settings: TickSettings, rng: random.Random) -> TickResult:
    """One scheduler step; the caller commits, then publishes ``messages`` and revokes ``revoke``."""
    fire_due_runs(session, now=now)
    result = TickResult()
    result.revoke = expire_timed_out_runs(session, now=now, rng=rng, grace=settings.timeout_grace)
    result.messages = dispatch_ready_runs(session, now=now, expires=settings.expires)
    result.messages += republish_stuck_runs(session, now=now, settings=settings)
    return result


def scheduled_pipelines(session: Session) -> list[Pipeline]:
    return list(
        session.exec(
            select(Pipeline).where(
                col(Pipeline.enabled), col(Pipeline.paused).is_(False), col(Pipeline.schedule).is_not(None)
            )
        )
    )


def last_scheduled_fire(session: Session) -> dict[str, datetime]:
    rows = session.exec(
        select(Run.pipeline, func.max(Run.scheduled_for))
        .where(Run.trigger == RunTrigger.SCHEDULE)
        .group_by(Run.pipeline)
    )
    return {name: fired for name, fired in rows if fired is not None}


def due_fires(pipeline: Pipeline, *, last_fired: datetime | None, now: datetime) -> list[datetime]:
    """The fires a pipeline owes at ``now`` under its catch-up policy, oldest first."""
    assert pipeline.schedule is not None and pipeline.schedule_since is not None
    after = max(filter(None, [pipeline.schedule_since, last_fired]))
    limit = pipeline.max_catchup if pipeline.catchup == "all" else 1
    return latest_fires(pipeline.schedule, pipeline.timezone, after, now, limit=limit)


def fire_due_runs(session: Session, *, now: datetime) -> int:
    """Create a run per due fire: ``scheduled``, or ``skipped`` when the overlap policy says so.

    One INSERT for the whole tick; a fire that has a run already (another beat made it) is left
    alone by the unique run key. Returns how many runs were created.
    """
    last_fired = last_scheduled_fire(session)
    busy = _busy_pipelines(session)
    rows: list[dict[str, object]] = []
    for pipeline in scheduled_pipelines(session):
        try:
            fires = due_fires(pipeline, last_fired=last_fired.get(pipeline.name), now=now)
        except Exception:
            # one broken schedule must not stop every other pipeline from firing
            log.exception("pipeline %s: cannot evaluate schedule %r", pipeline.name, pipeline.schedule)
            continue
        for fire in fires:
            skipped = None
            if pipeline.overlap == "skip":
                if pipeline.name in busy:
                    skipped = "skipped: the previous run is still active (overlap: skip)"
                busy.add(pipeline.name)
            rows.append(_new_run_row(pipeline.name, fire, now=now, skipped_because=skipped))
    created = insert_new_runs(session, rows)
    if created:
        log.info("fired %d run(s) for %d due fire(s)", len(created), len(rows))
        insert_changes(
            session,
            [
                change_row(
                    at=now,
                    run_key=str(row["run_key"]),
                    pipeline=str(row["pipeline"]),
                    attempt=1,
                    to_state=str(row["state"]),
                    from_state=None,
                    reason=str(row["error"] or "scheduled fire"),
                )
                for row in rows
                if row["run_key"] in created
            ],
        )
    return len(created)


def _new_run_row(
    pipeline: str, fire: datetime, *, now: datetime, skipped_because: str | None
) -> dict[str, object]:
    return {
        "run_key": run_key_for(pipeline, trigger=RunTrigger.SCHEDULE, scheduled_for=fire),
        "pipeline": pipeline,
        "trigger": RunTrigger.SCHEDULE,
        "scheduled_for": fire,
        "state": RunState.SKIPPED if skipped_because else RunState.SCHEDULED,
        "attempt": 1,
        "deliveries": 0,
        "created_at": now,
        "finished_at": now if skipped_because else None,
        "rows_read": 0,
        "rows_written": 0,
        "error": skipped_because,
        "error_retryable": False,
    }


def insert_new_runs(session: Session, rows: list[dict[str, object]]) -> set[str]:
    """INSERT ... ON CONFLICT (run_key) DO NOTHING, in chunks; the run keys inserted."""
    if not rows:
        return set()
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(Run).on_conflict_do_nothing(index_elements=["run_key"]).returning(col(Run.run_key))
    created: set[str] = set()
    connection = session.connection()
    for chunk in _chunks(rows, CHUNK):
        # RETURNING with executemany works on SQLite and PostgreSQL ("insertmanyvalues")
        created.update(key for (key,) in connection.execute(statement, chunk))
    return created


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _busy_pipelines(session: Session) -> set[str]:
    rows = session.exec(
        select(Run.pipeline).where(col(Run.state).in_([*ACTIVE_RUN_STATES, RunState.SCHEDULED])).distinct()
    )
    return set(rows)


def dispatch_ready_runs(session: Session, *, now: datetime, expires: float) -> list[Outgoing]:
    """Queue scheduled runs whose time has come, as far as each pipeline's overlap policy allows.

    The claim is one UPDATE ... WHERE state = 'scheduled' RETURNING id per chunk, so when two beats
    tick together each run is queued by exactly one of them.
    """
    waiting = (
        session.connection()
        .execute(
            sa_select(col(Run.id), col(Run.run_key), col(Run.pipeline), col(Run.attempt), col(Run.error))
            .where(
                col(Run.state) == RunState.SCHEDULED,
                or_(col(Run.next_attempt_at).is_(None), col(Run.next_attempt_at) <= now),
            )
            .order_by(col(Run.created_at), col(Run.id))
        )
        .all()
    )
    if not waiting:
        return []
    take_dispatch_turn(session)  # the active counts below must not change until this tick commits
    pipelines = {p.name: p for p in session.exec(select(Pipeline))}
    active = _active_by_pipeline(session)
    placement = Placement.load(session)
    specs: dict[str, dict[str, Any]] = {}
    plan: dict[int, tuple[str, str, int, str]] = {}  # id -> (run key, pipeline, attempt, daemon)
    removed: list[str] = []
    waiting_because: dict[str, list[int]] = {}  # reason -> ids of runs not yet showing it
    for row_id, run_key, pipeline_name, attempt, error in waiting:
        assert row_id is not None  # a stored row always has its id
        run_id = row_id
        pipeline = pipelines.get(pipeline_name)
        if pipeline is None:
            removed.append(run_key)
            continue
        full = active.get(pipeline_name, 0) >= run_capacity(pipeline)
        reason = waiting_for_room(pipeline) if full else None
        daemon = None if reason else placement.choose(pipeline)
        if daemon is None:
            reason = reason or WAITING_FOR_DAEMON
            if error != reason:
                waiting_because.setdefault(reason, []).append(run_id)
            continue
        active[pipeline_name] = active.get(pipeline_name, 0) + 1
        plan[run_id] = (run_key, pipeline_name, attempt, daemon)
    for run_key in removed:
        run = get_run(session, run_key)
        if run is not None:
            finish(session, run, RunState.CANCELLED, error="pipeline removed from the configuration", at=now)
    for reason, ids in waiting_because.items():
        session.exec(update(Run).where(col(Run.id).in_(ids)).values(error=reason))
    claimed = _claim(session, list(plan), now=now)
    assignments = [(run_id, *plan[run_id]) for run_id in claimed]  # id, key, pipeline, attempt, daemon
    if not assignments:
        return []
    connection = session.connection()
    connection.execute(
        update(Run)
        .where(col(Run.id) == bindparam("run_id"))
        .values(daemon=bindparam("daemon"), task_id=bindparam("task_id")),
        [{"run_id": i, "daemon": d, "task_id": task_id_for(k, a)} for i, k, _, a, d in assignments],
    )
    connection.execute(
        insert_statement(RunAttempt),
        [
            {
                "run_key": key,
                "attempt": attempt,
                "daemon": daemon,
                "task_id": task_id_for(key, attempt),
                "state": RunState.QUEUED,
                "queued_at": now,
                "deliveries": 0,
                "rows_read": 0,
                "rows_written": 0,
            }
            for _, key, _, attempt, daemon in assignments
        ],
    )
    insert_changes(
        session,
        [
            change_row(
                at=now,
                run_key=key,
                pipeline=pipeline_name,
                attempt=attempt,
                daemon=daemon,
                to_state=RunState.QUEUED,
                from_state=RunState.SCHEDULED,
                reason=f"on daemon {daemon}",
            )
            for _, key, pipeline_name, attempt, daemon in assignments
        ],
    )
    messages = []
    for _, run_key, pipeline_name, attempt, daemon in assignments:
        if pipeline_name not in specs:
            specs[pipeline_name] = pipeline_spec(session, pipelines[pipeline_name]).model_dump(mode="json")
        payload = job_payload(
            run_key=run_key,
            attempt=attempt,
            pipeline=specs[pipeline_name],
            timeout_seconds=pipelines[pipeline_name].timeout,
        )
        task_id = task_id_for(run_key, attempt)
        messages.append(
            job_outgoing(
                daemon=daemon,
                task_id=task_id,
                payload=payload,
                pipeline_name=pipeline_name,
                max_attempts=pipelines[pipeline_name].max_attempts,
                expires=expires,
            )
        )
    return messages


def _claim(session: Session, run_ids: list[int], *, now: datetime) -> list[int]:
    claimed: list[int] = []
    for chunk in _chunks(run_ids, CHUNK):
        statement = (
            update(Run)
            .where(col(Run.id).in_(chunk), col(Run.state) == RunState.SCHEDULED)
            .values(state=RunState.QUEUED, queued_at=now, error=None)
            .returning(col(Run.id))
        )
        claimed += [row_id for (row_id,) in session.connection().execute(statement) if row_id is not None]
    order = {run_id: index for index, run_id in enumerate(run_ids)}
    return sorted(claimed, key=order.__getitem__)


def _active_by_pipeline(session: Session) -> dict[str, int]:
    rows = session.exec(
        select(Run.pipeline, func.count()).where(col(Run.state).in_(ACTIVE_RUN_STATES)).group_by(Run.pipeline)
    )
    return {name: int(count) for name, count in rows}


def expire_timed_out_runs(
    session: Session, *, now: datetime, rng: random.Random, grace: float = 30.0
) -> list[str]:
    """Running runs ``grace`` seconds past their pipeline's timeout end ``timed_out`` (and may be retried).

    The daemon stops an attempt at its timeout and reports it; this is the backstop for a daemon that
    did not (frozen, cut off), so it waits out the grace first: an attempt the daemon still runs can
    no longer commit by then, and nothing is retried while the first attempt may still write.
    """
    revoke: list[str] = []
    timeouts = {
        p.name: p.timeout for p in session.exec(select(Pipeline).where(col(Pipeline.timeout).is_not(None)))
    }
    if not timeouts:
        return revoke
    running = session.exec(
        select(Run).where(col(Run.state) == RunState.RUNNING, col(Run.pipeline).in_(list(timeouts)))
    ).all()
    for run in running:
        limit = timeouts[run.pipeline]
        if (
            run.started_at is None
            or limit is None
            or not past_timeout(run.started_at, limit=limit, grace=grace, now=now)
        ):
            continue
        if run.task_id:
            revoke.append(run.task_id)
        log.warning(
            "run %s outlived its timeout of %.0fs by the %.0fs grace; ending it", run.run_key, limit, grace
        )
        fail_or_retry(
            session,
            run,
            RunState.TIMED_OUT,
            error=f"timed out after {limit:.0f}s (the daemon did not report within {grace:.0f}s more)",
            retryable=True,
            at=now,
            rng=rng,
        )
    return revoke


def past_timeout(started_at: datetime, *, limit: float, grace: float, now: datetime) -> bool:
    """True once a run started at ``started_at`` has outlived its timeout and the grace after it."""
    return started_at + timedelta(seconds=limit + grace) <= now


def republish_stuck_runs(session: Session, *, now: datetime, settings: TickSettings) -> list[Outgoing]:
    """The reconciler: queued runs whose publish was lost, or that never started, are sent again.

    Safe because daemons run a run key at most once at a time and the destination's state table
    records which run last completed.
    """
    unpublished_before = now - timedelta(seconds=settings.republish_after)
    unstarted_before = now - timedelta(seconds=settings.restart_after)
    stuck = session.exec(
        select(Run).where(
            col(Run.state) == RunState.QUEUED,
            or_(
                (col(Run.published_at).is_(None)) & (col(Run.queued_at) < unpublished_before),
                col(Run.published_at) < unstarted_before,
            ),
        )
    ).all()
    pipelines = {p.name: p for p in session.exec(select(Pipeline))}
    messages = []
    for run in stuck:
        pipeline = pipelines.get(run.pipeline)
        if pipeline is not None and run.daemon is not None:
            log.warning(
                "run %s is queued but %s; publishing it again",
                run.run_key,
                "was never published" if run.published_at is None else "never started",
            )
            messages.append(job_message(session, run, pipeline, expires=settings.expires))
    return messages
