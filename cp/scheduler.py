"""The scheduler's tick as small steps, each a plain function of (session, now).

Beat calls :func:`tick` about once a second; two beats may run it at the same time: run keys are
unique per fire and queuing a run is one conditional UPDATE, so nothing is dispatched twice.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, or_, select

from cp.dispatch import Outgoing
from cp.models import ACTIVE_RUN_STATES, Pipeline, Run, RunState, RunTrigger
from cp.runs import active_runs, create_run, fail_or_retry, finish, job_message, queue_run
from cp.schedule import latest_fires

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickSettings:
    expires: float  # seconds a job message stays valid in a daemon's queue
    republish_after: float = 5.0  # a queued run whose publish was not confirmed is sent again
    restart_after: float = 300.0  # a published run that never started is sent again


@dataclass
class TickResult:
    messages: list[Outgoing] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)  # task ids of runs that timed out


def tick(session: Session, *, now: datetime, settings: TickSettings, rng: random.Random) -> TickResult:
    """One scheduler step; the caller commits, then publishes ``messages`` and revokes ``revoke``."""
    fire_due_runs(session, now=now)
    result = TickResult()
    result.revoke = expire_timed_out_runs(session, now=now, rng=rng)
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


def fire_due_runs(session: Session, *, now: datetime) -> list[Run]:
    """Create a run per due fire: ``scheduled``, or ``skipped`` when the overlap policy says so."""
    created: list[Run] = []
    last_fired = last_scheduled_fire(session)
    for pipeline in scheduled_pipelines(session):
        try:
            fires = due_fires(pipeline, last_fired=last_fired.get(pipeline.name), now=now)
        except Exception:
            # one broken schedule must not stop every other pipeline from firing
            log.exception("pipeline %s: cannot evaluate schedule %r", pipeline.name, pipeline.schedule)
            continue
        for fire in fires:
            skipped = None
            if pipeline.overlap == "skip" and _busy(session, pipeline.name):
                skipped = "skipped: the previous run is still active (overlap: skip)"
            run = create_run(
                session,
                pipeline,
                trigger=RunTrigger.SCHEDULE,
                now=now,
                scheduled_for=fire,
                skipped_because=skipped,
            )
            if run is not None:
                log.info(
                    "pipeline %s fired for %s: run %s %s",
                    pipeline.name,
                    fire.isoformat(),
                    run.run_key,
                    run.state,
                )
                created.append(run)
    return created


def _busy(session: Session, pipeline: str) -> bool:
    query = select(func.count()).where(
        Run.pipeline == pipeline, col(Run.state).in_([*ACTIVE_RUN_STATES, RunState.SCHEDULED])
    )
    return int(session.exec(query).one()) > 0


def dispatch_ready_runs(session: Session, *, now: datetime, expires: float) -> list[Outgoing]:
    """Queue scheduled runs whose time has come, as far as each pipeline's overlap policy allows."""
    waiting = session.exec(
        select(Run)
        .where(
            col(Run.state) == RunState.SCHEDULED,
            or_(col(Run.next_attempt_at).is_(None), col(Run.next_attempt_at) <= now),
        )
        .order_by(col(Run.created_at), col(Run.id))
    ).all()
    pipelines = {p.name: p for p in session.exec(select(Pipeline))}
    active: dict[str, int] = {}
    messages: list[Outgoing] = []
    for run in waiting:
        pipeline = pipelines.get(run.pipeline)
        if pipeline is None:
            finish(session, run, RunState.CANCELLED, error="pipeline removed from the configuration", at=now)
            continue
        if run.pipeline not in active:
            active[run.pipeline] = active_runs(session, run.pipeline)
        capacity = pipeline.max_active_runs if pipeline.overlap == "allow" else 1
        if active[run.pipeline] >= capacity:
            continue
        message = queue_run(session, run, pipeline, now=now, expires=expires)
        if message is not None:
            active[run.pipeline] += 1
            messages.append(message)
    return messages


def expire_timed_out_runs(session: Session, *, now: datetime, rng: random.Random) -> list[str]:
    """Running runs past their pipeline's timeout end ``timed_out`` (and may be retried)."""
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
        if run.started_at is None or limit is None or run.started_at + timedelta(seconds=limit) > now:
            continue
        if run.task_id:
            revoke.append(run.task_id)
        fail_or_retry(
            session,
            run,
            RunState.TIMED_OUT,
            error=f"timed out after {limit:.0f}s",
            retryable=True,
            at=now,
            rng=rng,
        )
    return revoke


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
