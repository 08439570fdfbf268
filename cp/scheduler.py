"""One scheduler step: turn due cron fires into queued runs (keyed, so each fire exists once)."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from cp.models import Pipeline, Run, RunTrigger
from cp.runs import NewRun, create_run
from cp.schedule import latest_due

log = logging.getLogger(__name__)


def scheduled_pipelines(session: Session) -> list[Pipeline]:
    return list(
        session.exec(select(Pipeline).where(col(Pipeline.enabled), col(Pipeline.schedule).is_not(None)))
    )


def last_scheduled_fire(session: Session) -> dict[str, datetime]:
    rows = session.exec(
        select(Run.pipeline, func.max(Run.scheduled_for))
        .where(Run.trigger == RunTrigger.SCHEDULE)
        .group_by(Run.pipeline)
    )
    return {name: fired for name, fired in rows if fired is not None}


def fire_due_runs(session: Session, *, now: datetime, expires: float) -> list[NewRun]:
    """Create a run for each pipeline whose newest due fire has none yet; caller commits, then sends."""
    created: list[NewRun] = []
    last_fired = last_scheduled_fire(session)
    for pipeline in scheduled_pipelines(session):
        assert pipeline.schedule is not None and pipeline.schedule_since is not None
        after = max(filter(None, [pipeline.schedule_since, last_fired.get(pipeline.name)]))
        try:
            fire = latest_due(pipeline.schedule, pipeline.timezone, after, now)
        except Exception:
            # one broken schedule must not stop every other pipeline from firing
            log.exception("pipeline %s: cannot evaluate schedule %r", pipeline.name, pipeline.schedule)
            continue
        if fire is None:
            continue
        new = create_run(
            session,
            pipeline,
            trigger=RunTrigger.SCHEDULE,
            now=now,
            scheduled_for=fire,
            expires=expires,
        )
        if new is not None:
            log.info(
                "pipeline %s fired for %s as run %s",
                pipeline.name,
                fire.isoformat(),
                new.run.run_key,
            )
            created.append(new)
    return created
