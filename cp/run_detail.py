"""``mycelial runs show``: one run with its attempts, its state changes and its log lines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from cp.models import LogRecord, Run, RunAttempt, RunStateChange
from cp.views import attempts_of, run_row

DEFAULT_LOG_LINES = 200
MAX_LOG_LINES = 100_000


def find_run(session: Session, ref: str) -> Run | None:
    """The run whose key is ``ref``, or whose id it is, or whose attempt's task id (``KEY#2``) it is."""
    run = session.exec(select(Run).where(Run.run_key == ref)).first()
    if run is None and ref.isdigit() and len(ref) < 19:
        run = session.get(Run, int(ref))
    if run is None and "#" in ref:
        run = session.exec(select(Run).where(Run.run_key == ref.rsplit("#", 1)[0])).first()
    return run


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def attempt_row(attempt: RunAttempt, run: Run) -> dict[str, Any]:
    """An attempt; the current one's rows are the run's live counters until it ends."""
    live = attempt.attempt == run.attempt and not attempt.state.finished
    started, finished = attempt.started_at, attempt.finished_at
    return {
        "attempt": attempt.attempt,
        "daemon": attempt.daemon,
        "task_id": attempt.task_id,
        "state": str(attempt.state),
        "queued_at": _iso(attempt.queued_at),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "duration_s": round((finished - started).total_seconds(), 3) if started and finished else None,
        "deliveries": attempt.deliveries,
        "rows_read": run.rows_read if live else attempt.rows_read,
        "rows_written": run.rows_written if live else attempt.rows_written,
        "error": attempt.error,
    }


def state_change_rows(session: Session, run_key: str) -> list[dict[str, Any]]:
    query = (
        select(RunStateChange)
        .where(RunStateChange.run_key == run_key)
        .order_by(col(RunStateChange.at), col(RunStateChange.id))
    )
    return [
        {
            "at": _iso(c.at),
            "attempt": c.attempt,
            "daemon": c.daemon,
            "from_state": c.from_state,
            "to_state": c.to_state,
            "reason": c.reason,
        }
        for c in session.exec(query)
    ]


def log_lines(session: Session, run_key: str, *, last: int) -> tuple[list[dict[str, Any]], int]:
    """The run's ``last`` log lines, oldest first, and how many it has in all."""
    total = session.exec(
        select(func.count()).select_from(LogRecord).where(LogRecord.run_key == run_key)
    ).one()
    query = (
        sa_select(
            col(LogRecord.ts),
            col(LogRecord.daemon),
            col(LogRecord.seq),
            col(LogRecord.level),
            col(LogRecord.logger),
            col(LogRecord.message),
        )
        .where(col(LogRecord.run_key) == run_key)
        .order_by(col(LogRecord.ts).desc(), col(LogRecord.seq).desc(), col(LogRecord.id).desc())
        .limit(last)
    )
    lines = [
        {"ts": _iso(ts), "daemon": daemon, "seq": seq, "level": level, "logger": logger, "message": message}
        for ts, daemon, seq, level, logger, message in session.connection().execute(query)
    ]
    lines.reverse()
    return lines, int(total)


def run_detail(session: Session, run: Run, *, last_log_lines: int = DEFAULT_LOG_LINES) -> dict[str, Any]:
    attempts = attempts_of(session, [run.run_key]).get(run.run_key, [])
    lines, total = log_lines(session, run.run_key, last=last_log_lines)
    return {
        "run": run_row(run, attempts),
        "attempts": [attempt_row(a, run) for a in attempts],
        "state_changes": state_change_rows(session, run.run_key),
        "log_lines": lines,
        "log_lines_total": total,
    }
