"""What one scrape reads from SQL: a few GROUP BY queries, bounded by ``max_daemons`` and
``max_pipelines`` (the series past them are dropped and counted, never exported)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Float, case, cast, func, literal, literal_column
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from cp.health import HealthLimits
from cp.models import FINISHED_RUN_STATES, Alert, Daemon, Pipeline, Run, RunState, RunTrigger
from cp.shown_status import Shown, shown_status
from cp.views import health_check_ran_at

log = logging.getLogger(__name__)

# seconds; run durations from a second to a day, schedule delays from 10 ms to an hour
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 86_400.0)
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


@dataclass(frozen=True)
class DaemonReading:
    daemon: Daemon
    shown: Shown


@dataclass(frozen=True)
class Distribution:
    """A gauge histogram: cumulative counts per upper bound, their sum and count."""

    buckets: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float
    count: int


@dataclass
class SqlReadings:
    daemons: list[DaemonReading] = field(default_factory=list)
    daemons_dropped: int = 0
    checker_ran_at: datetime | None = None
    pipelines: list[str] = field(default_factory=list)
    pipelines_dropped: int = 0
    runs_by_state: dict[tuple[str, str], int] = field(default_factory=dict)  # (pipeline, state)
    last_success: dict[str, datetime] = field(default_factory=dict)
    durations: dict[str, Distribution] = field(default_factory=dict)
    schedule_delays: dict[str, Distribution] = field(default_factory=dict)
    alerts_by_state: dict[str, int] = field(default_factory=dict)


def seconds_between(start: Any, end: Any, dialect: Dialect) -> Any:
    """``end - start`` in seconds, in SQL of this dialect."""
    if dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86_400.0
    if dialect.name in {"mysql", "mariadb"}:
        return func.timestampdiff(literal_column("MICROSECOND"), start, end) / 1e6
    return cast(func.extract("epoch", end - start), Float)


def read_sql(
    session: Session,
    *,
    now: datetime,
    limits: HealthLimits,
    stale_after: float,
    max_daemons: int,
    max_pipelines: int,
) -> SqlReadings:
    readings = SqlReadings(checker_ran_at=health_check_ran_at(session))
    declared = col(Daemon.declared).is_(True)
    total_daemons = session.exec(select(func.count()).select_from(Daemon).where(declared)).one()
    unused = (defer(Daemon.running_progress), defer(Daemon.config_error), defer(Daemon.labels))  # type: ignore[arg-type]
    query = select(Daemon).options(*unused).where(declared).order_by(col(Daemon.name)).limit(max_daemons)
    rows = session.exec(query)
    for daemon in rows:
        shown = shown_status(
            daemon, now=now, limits=limits, checker_ran_at=readings.checker_ran_at, stale_after=stale_after
        )
        readings.daemons.append(DaemonReading(daemon, shown))
    readings.daemons_dropped = max(0, int(total_daemons) - len(readings.daemons))

    total_pipelines = session.exec(select(func.count()).select_from(Pipeline)).one()
    readings.pipelines = list(
        session.exec(select(Pipeline.name).order_by(col(Pipeline.name)).limit(max_pipelines))
    )
    readings.pipelines_dropped = max(0, int(total_pipelines) - len(readings.pipelines))
    if readings.pipelines:
        _read_runs(session, readings)
    readings.alerts_by_state = alerts_by_state(session)
    return readings


def _read_runs(session: Session, readings: SqlReadings) -> None:
    names = readings.pipelines
    # past the cap, only the exported pipelines' runs are read; else every run (no long IN list)
    of_exported = (
        col(Run.pipeline).in_(names) if readings.pipelines_dropped else col(Run.pipeline).is_not(None)
    )
    exported = set(names)
    for pipeline, state, count in session.exec(
        select(Run.pipeline, Run.state, func.count()).where(of_exported).group_by(Run.pipeline, Run.state)
    ):
        if pipeline in exported:
            readings.runs_by_state[(pipeline, str(state))] = int(count)
    for pipeline, finished_at in session.exec(
        select(Run.pipeline, func.max(Run.finished_at))
        .where(of_exported, Run.state == RunState.SUCCEEDED)
        .group_by(Run.pipeline)
    ):
        if pipeline in exported and finished_at is not None:
            readings.last_success[pipeline] = finished_at
    dialect = session.get_bind().dialect
    finished = col(Run.state).in_([s.value for s in FINISHED_RUN_STATES])
    readings.durations = _distributions(
        session,
        seconds_between(col(Run.started_at), col(Run.finished_at), dialect),
        [of_exported, finished, col(Run.started_at).is_not(None), col(Run.finished_at).is_not(None)],
        DURATION_BUCKETS,
        exported,
    )
    readings.schedule_delays = _distributions(
        session,
        seconds_between(col(Run.scheduled_for), col(Run.started_at), dialect),
        [
            of_exported,
            Run.trigger == RunTrigger.SCHEDULE,
            col(Run.scheduled_for).is_not(None),
            col(Run.started_at).is_not(None),
        ],
        DELAY_BUCKETS,
        exported,
    )


def _distributions(
    session: Session,
    value: Any,
    where: Sequence[Any],
    buckets: tuple[float, ...],
    exported: set[str],
) -> dict[str, Distribution]:
    """Per pipeline, how many values fall at or under each bucket bound: one GROUP BY (pipeline,
    bucket) query over a subquery that works each value out once; one CASE a row, summed here."""
    values = sa_select(col(Run.pipeline).label("pipeline"), value.label("v")).where(*where).subquery()
    v = values.c.v
    bucket = case(*((v <= literal(bound, Float), index) for index, bound in enumerate(buckets)),
                  else_=len(buckets)).label("bucket")  # fmt: skip
    query = sa_select(values.c.pipeline, bucket, func.count(), func.sum(v)).group_by(
        values.c.pipeline, bucket
    )
    counts: dict[str, list[int]] = {}
    totals: dict[str, float] = {}
    for pipeline, index, count, total in session.execute(query):
        if pipeline not in exported or index is None:
            continue
        per_bucket = counts.setdefault(pipeline, [0] * (len(buckets) + 1))
        per_bucket[int(index)] += int(count)
        totals[pipeline] = totals.get(pipeline, 0.0) + float(total or 0.0)
    result: dict[str, Distribution] = {}
    for pipeline, per_bucket in counts.items():
        cumulative, running = [], 0
        for n in per_bucket[:-1]:
            running += n
            cumulative.append(running)
        result[pipeline] = Distribution(
            buckets=buckets,
            cumulative=tuple(cumulative),
            total=max(0.0, totals[pipeline]),
            count=running + per_bucket[-1],
        )
    return result


def alerts_by_state(session: Session) -> dict[str, int]:
    """Alerts per state (cp/alerts)."""
    rows = session.execute(sa_select(col(Alert.state), func.count()).group_by(col(Alert.state)))
    return {str(state): int(count) for state, count in rows if state is not None}
