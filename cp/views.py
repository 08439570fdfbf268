"""Read models for listings: plain dicts that the CLI prints as tables or JSON."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, func, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import defer
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session, col, select

from cp.health import HealthLimits
from cp.liveness import HEALTH_CHECK
from cp.models import (
    ConfigVersion,
    Daemon,
    DaemonKey,
    DaemonStatus,
    Pipeline,
    ProcessSeen,
    Run,
    RunAttempt,
    UndeclaredDaemon,
)
from cp.run_totals import run_totals
from cp.shown_status import shown_status


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def daemon_rows(
    session: Session, *, now: datetime, limits: HealthLimits, stale_after: float
) -> list[dict[str, Any]]:
    """Every daemon, its status derived now (cp/shown_status.py) from ``limits``; a status whose
    health checker has not run for ``stale_after`` seconds is marked stale."""
    rows = []
    keys = {k.name: k for k in session.exec(select(DaemonKey))}
    checker_ran_at = health_check_ran_at(session)
    for d in session.exec(select(Daemon).order_by(col(Daemon.name))):
        age = (now - d.last_heartbeat_at).total_seconds() if d.last_heartbeat_at else None
        shown = shown_status(
            d, now=now, limits=limits, checker_ran_at=checker_ran_at, stale_after=stale_after
        )
        rows.append(
            {
                "name": d.name,
                # a row kept after its daemon left the configuration is used by nothing
                "status": str(shown.status) if d.declared else UNDECLARED_STATUS,
                "status_since": _iso(shown.since),
                "status_reason": shown.reason,
                "status_stale": shown.stale and d.declared,
                "recorded_status": str(shown.recorded),
                "checker_last_ran_at": _iso(checker_ran_at),
                "checker_age_s": shown.checker_age_s,
                "declared": d.declared,
                "labels": d.labels,
                "last_heartbeat_at": _iso(d.last_heartbeat_at),
                "last_heartbeat_age_s": round(age, 1) if age is not None else None,
                "last_seen_at": _iso(d.last_heartbeat_at),
                "last_probe_rtt_ms": d.last_probe_rtt_ms,
                "last_probe_reply_at": _iso(d.last_probe_reply_at),
                "queue_depth": d.queue_depth,
                "running_runs": d.running_runs,
                "cpu_percent": d.cpu_percent,
                "memory_mb": d.memory_mb,
                # as of the last heartbeat; none once the daemon is offline (nothing is known)
                "progress": list(d.running_progress or [])
                if shown.status is not DaemonStatus.OFFLINE
                else [],
                "desired_config_version": d.desired_config_version,
                "applied_config_version": d.applied_config_version,
                "config_in_sync": d.desired_config_version is None
                or d.desired_config_version == d.applied_config_version,
                "config_error": d.config_error,
                "software_version": d.software_version,
                "hostname": d.hostname,
                "key": key_state(keys.get(d.name)),
                "key_id": keys[d.name].key_id if d.name in keys else None,
            }
        )
    known = {row["name"] for row in rows}
    for u in session.exec(select(UndeclaredDaemon).order_by(col(UndeclaredDaemon.name))):
        if u.name not in known:
            rows.append(undeclared_row(u))
    return rows


UNDECLARED_STATUS = "undeclared"


def health_check_ran_at(session: Session) -> datetime | None:
    """When a health check last ran, any worker's; None if never."""
    query = select(ProcessSeen.seen_at).where(ProcessSeen.kind == HEALTH_CHECK)
    return session.exec(query).first()


def key_state(key: DaemonKey | None) -> str:
    """``enrolled``, ``revoked`` or ``none`` (its messages are refused until it enrols)."""
    if key is None:
        return "none"
    return "revoked" if key.revoked_at is not None else "enrolled"


def undeclared_row(u: UndeclaredDaemon) -> dict[str, Any]:
    """A name heard from without being declared: shown, never scheduled, pushed to or probed."""
    return {
        "name": u.name,
        "status": UNDECLARED_STATUS,
        "status_since": _iso(u.first_seen_at),
        "status_reason": "not declared in the configuration: ignored",
        "status_stale": False,
        "recorded_status": UNDECLARED_STATUS,
        "checker_last_ran_at": None,
        "checker_age_s": None,
        "declared": False,
        "labels": {},
        "last_heartbeat_at": None,
        "last_heartbeat_age_s": None,
        "last_seen_at": _iso(u.last_seen_at),
        "last_probe_rtt_ms": None,
        "last_probe_reply_at": None,
        "queue_depth": None,
        "running_runs": 0,
        "cpu_percent": None,
        "memory_mb": None,
        "progress": [],
        "desired_config_version": None,
        "applied_config_version": None,
        "config_in_sync": True,
        "config_error": None,
        "software_version": u.software_version,
        "hostname": u.hostname,
        "key": "none",
        "key_id": None,
    }


def pipeline_rows(session: Session) -> list[dict[str, Any]]:
    newest_ids = select(func.max(Run.id)).group_by(Run.pipeline)
    last_runs = {run.pipeline: run for run in session.exec(select(Run).where(col(Run.id).in_(newest_ids)))}
    rows = []
    for p in session.exec(select(Pipeline).order_by(col(Pipeline.name))):
        last = last_runs.get(p.name)
        rows.append(
            {
                "name": p.name,
                "source": p.source_connector,
                "source_table": p.source_table,
                "destination": p.destination_connector,
                "destination_table": p.destination_table,
                "mode": p.mode,
                "schedule": p.schedule,
                "timezone": p.timezone,
                "placement": {"daemon": p.daemon} if p.daemon else {"labels": p.labels},
                "enabled": p.enabled,
                "paused": p.paused,
                "policy": {
                    "catchup": p.catchup,
                    "max_catchup": p.max_catchup,
                    "overlap": p.overlap,
                    "max_active_runs": p.max_active_runs,
                    "max_attempts": p.max_attempts,
                    "timeout": p.timeout,
                },
                "config_version": p.config_version,
                "last_run": last.run_key if last else None,
                "last_run_state": str(last.state) if last else None,
                "last_run_finished_at": _iso(last.finished_at) if last else None,
            }
        )
    return rows


def run_row(run: Run, attempts: Iterable[RunAttempt] = ()) -> dict[str, Any]:
    """A run with rows and times over all of its ``attempts`` (cp/run_totals.py)."""
    totals = run_totals(run, attempts)
    return {
        "run_key": run.run_key,
        "pipeline": run.pipeline,
        "state": str(run.state),
        "trigger": str(run.trigger),
        "daemon": run.daemon,
        "attempt": run.attempt,
        "deliveries": run.deliveries,
        "next_attempt_at": _iso(run.next_attempt_at),
        "scheduled_for": _iso(run.scheduled_for),
        "created_at": _iso(run.created_at),
        "started_at": _iso(totals.first_started_at),
        "finished_at": _iso(run.finished_at),
        "duration_s": totals.duration_s,
        "running_s": totals.running_s,
        "rows_read": totals.rows_read,
        "rows_written": totals.rows_written,
        "error": run.error,
        "error_retryable": run.error_retryable,
    }


def run_rows(
    session: Session, *, pipeline: str | None = None, state: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    query = select(Run).order_by(col(Run.created_at).desc(), col(Run.id).desc()).limit(limit)
    if pipeline:
        query = query.where(Run.pipeline == pipeline)
    if state:
        query = query.where(col(Run.state) == state)
    runs = list(session.exec(query))
    attempts = attempts_of(session, [r.run_key for r in runs])
    return [run_row(r, attempts.get(r.run_key, ())) for r in runs]


ATTEMPT_KEYS_PER_QUERY = 500  # run keys in one IN list: well under every database's limit


def attempts_of(session: Session, run_keys: Sequence[str]) -> dict[str, list[RunAttempt]]:
    """Each run's attempt rows, oldest first, in a query per few hundred runs."""
    found: dict[str, list[RunAttempt]] = {}
    for start in range(0, len(run_keys), ATTEMPT_KEYS_PER_QUERY):
        chunk = run_keys[start : start + ATTEMPT_KEYS_PER_QUERY]
        query = select(RunAttempt).where(col(RunAttempt.run_key).in_(chunk)).order_by(col(RunAttempt.attempt))
        for attempt in session.exec(query):
            found.setdefault(attempt.run_key, []).append(attempt)
    return found


def run_view(session: Session, run: Run) -> dict[str, Any]:
    """``run_row`` of one run, its attempts read here."""
    return run_row(run, attempts_of(session, [run.run_key]).get(run.run_key, ()))


class json_list_length(FunctionElement[int]):  # noqa: N801 - SQL functions read as SQL
    """The length of the JSON list at top-level ``key`` of a JSON column, counted by the database."""

    type = Integer()
    inherit_cache = True
    name = "json_list_length"

    def __init__(self, column: Any, key: str) -> None:
        self.key = key
        super().__init__(column)


@compiles(json_list_length, "sqlite")
def _sqlite_json_list_length(element: json_list_length, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    path = compiler.process(literal_column(f"'$.{element.key}'"), **kw)
    return f"coalesce(json_array_length({column}, {path}), 0)"


@compiles(json_list_length, "postgresql")
def _postgres_json_list_length(element: json_list_length, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"coalesce(json_array_length(({column})::json -> '{element.key}'), 0)"


def config_history_rows(session: Session, *, limit: int = 50) -> list[dict[str, Any]]:
    """Stored versions, newest first; documents are counted in SQL and never loaded here."""
    document: Any = ConfigVersion.document  # the mapped attribute, typed as its values by SQLModel
    query = (
        select(ConfigVersion, json_list_length(document, "pipelines"), json_list_length(document, "daemons"))
        .options(defer(document, raiseload=True))  # touching a document here is a bug: raise
        .order_by(col(ConfigVersion.id).desc())
        .limit(limit)
    )
    return [
        {
            "version": v.id,
            "created_at": _iso(v.created_at),
            "author": v.author,
            "comment": v.comment,
            "source": v.source,
            "checksum": v.checksum,
            "pipelines": pipelines,
            "daemons": daemons,
        }
        for v, pipelines, daemons in session.exec(query)
    ]
