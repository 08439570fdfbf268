"""Gather what the rules read, with a few set-wide queries (no query per daemon or pipeline)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from cp.alerts.conditions import DaemonFacts, Facts, PipelineFacts
from cp.alerts.rules import RuleDecl, RuleKind
from cp.health import HealthLimits, evaluate
from cp.models import Daemon, Pipeline, Run, RunState

OUTCOME_STATES = (RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT, RunState.LOST)
OldestAges = Callable[[list[str]], dict[str, float | None]]


def gather_facts(
    session: Session,
    rules: Iterable[RuleDecl],
    *,
    now: datetime,
    limits: HealthLimits,
    oldest_ages: OldestAges | None = None,
) -> Facts:
    """Facts for ``rules``: only what some rule needs is read."""
    rules = list(rules)
    kinds = {r.kind for r in rules}
    d = Daemon.__table__.c  # type: ignore[attr-defined]
    # columns, not ORM objects: a thousand daemons every few seconds
    daemons = list(
        session.connection().execute(
            sa_select(
                d.name,
                d.labels,
                d.status,
                d.last_heartbeat_at,
                d.last_probe_sent_at,
                d.last_probe_reply_at,
                d.queue_depth,
                d.desired_config_version,
                d.applied_config_version,
            ).where(d.declared.is_(True))
        )
    )
    ages: dict[str, float | None] = {}
    wants_age = [
        r for r in rules if r.kind is RuleKind.QUEUE_BACKLOG and r.threshold and r.threshold.oldest_age
    ]
    if wants_age and oldest_ages is not None:
        ages = oldest_ages([row.name for row in daemons])
    daemon_facts = []
    for row in daemons:
        status, reason = evaluate(row, now=now, limits=limits)
        daemon_facts.append(
            DaemonFacts(
                name=row.name,
                labels=dict(row.labels),
                status=status,
                status_reason=reason,
                queue_depth=row.queue_depth,
                oldest_age=ages.get(row.name),
                desired_version=row.desired_config_version,
                applied_version=row.applied_config_version,
            )
        )
    pipeline_kinds = kinds & {RuleKind.RUN_FAILURES, RuleKind.RUN_DURATION, RuleKind.FRESHNESS}
    if not pipeline_kinds:
        return Facts(daemons=daemon_facts)
    count = max(
        (r.threshold.count or 0 for r in rules if r.kind is RuleKind.RUN_FAILURES and r.threshold), default=0
    )
    outcomes = _recent_outcomes(session, count) if count else {}
    running = _running_since(session) if RuleKind.RUN_DURATION in kinds else {}
    succeeded = _last_success(session) if RuleKind.FRESHNESS in kinds else {}
    newest_daemon = _newest_run_daemon(session)
    pipeline_facts = []
    p = Pipeline.__table__.c  # type: ignore[attr-defined]
    query = sa_select(p.name, p.daemon, p.schedule_since, p.enabled, p.paused)
    for line in session.connection().execute(query):
        started = running.get(line.name)
        pipeline_facts.append(
            PipelineFacts(
                name=line.name,
                daemon=line.daemon or newest_daemon.get(line.name),
                recent_outcomes=tuple(outcomes.get(line.name, ())),
                longest_running=(now - started).total_seconds() if started is not None else None,
                last_success_at=succeeded.get(line.name),
                since=line.schedule_since,
                enabled=line.enabled and not line.paused,
            )
        )
    return Facts(daemons=daemon_facts, pipelines=pipeline_facts)


def _recent_outcomes(session: Session, count: int) -> dict[str, list[RunState]]:
    """Each pipeline's last ``count`` succeeded or failed runs, newest first."""
    run = Run.__table__.c  # type: ignore[attr-defined]
    numbered = (
        sa_select(
            run.pipeline,
            run.state,
            func.row_number()
            .over(partition_by=run.pipeline, order_by=(run.finished_at.desc(), run.id.desc()))
            .label("n"),
        )
        .where(run.state.in_([s.value for s in OUTCOME_STATES]))
        .subquery()
    )
    query = (
        sa_select(numbered.c.pipeline, numbered.c.state).where(numbered.c.n <= count).order_by(numbered.c.n)
    )
    found: dict[str, list[RunState]] = {}
    for pipeline, state in session.connection().execute(query):
        found.setdefault(pipeline, []).append(RunState(state))
    return found


def _running_since(session: Session) -> dict[str, datetime]:
    query = (
        select(Run.pipeline, func.min(Run.started_at))
        .where(Run.state == RunState.RUNNING, col(Run.started_at).is_not(None))
        .group_by(col(Run.pipeline))
    )
    return {pipeline: started for pipeline, started in session.exec(query) if started is not None}


def _last_success(session: Session) -> dict[str, datetime]:
    query = (
        select(Run.pipeline, func.max(Run.finished_at))
        .where(Run.state == RunState.SUCCEEDED)
        .group_by(col(Run.pipeline))
    )
    return {pipeline: at for pipeline, at in session.exec(query) if at is not None}


def _newest_run_daemon(session: Session) -> dict[str, str]:
    """The daemon of each pipeline's newest run that had one: where a label-placed pipeline runs."""
    newest = select(func.max(Run.id)).where(col(Run.daemon).is_not(None)).group_by(col(Run.pipeline))
    query = select(Run.pipeline, Run.daemon).where(col(Run.id).in_(newest.scalar_subquery()))
    return {pipeline: daemon for pipeline, daemon in session.exec(query) if daemon is not None}
