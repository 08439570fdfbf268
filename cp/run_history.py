"""A run's state changes, one ``RunStateChange`` row each, added to the session that changes the run
so the record commits (or rolls back) with the change itself. Where runs change in bulk (the
scheduler's fires and claims) the rows go in one INSERT with the statement that changed them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from cp.metrics.commit_counts import count_bulk_changes
from cp.models import Run, RunState, RunStateChange

RETRYING = "retrying"  # an attempt ended and the run is scheduled for the next one
MOVED = "moved"  # a queued attempt left an offline daemon; the run waits for another one
REASON_MAX = 2_000  # characters of a reason kept (errors are longer only in the run row itself)


def clip(reason: str | None) -> str:
    text = reason or ""
    return text if len(text) <= REASON_MAX else f"{text[:REASON_MAX]}…"


def note_change(
    session: Session,
    run: Run,
    to_state: RunState | str,
    *,
    at: datetime,
    reason: str | None = None,
    from_state: RunState | str | None,
) -> None:
    """Record that ``run`` went from ``from_state`` to ``to_state``; nothing when they are the same."""
    if from_state is not None and str(from_state) == str(to_state):
        return
    session.add(
        RunStateChange(
            at=at,
            run_key=run.run_key,
            pipeline=run.pipeline,
            attempt=run.attempt,
            daemon=run.daemon,
            from_state=str(from_state) if from_state is not None else None,
            to_state=str(to_state),
            reason=clip(reason),
        )
    )


def change_row(
    *,
    at: datetime,
    run_key: str,
    pipeline: str,
    attempt: int,
    to_state: RunState | str,
    from_state: RunState | str | None,
    daemon: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One row for :func:`insert_changes`."""
    return {
        "at": at,
        "run_key": run_key,
        "pipeline": pipeline,
        "attempt": attempt,
        "daemon": daemon,
        "from_state": str(from_state) if from_state is not None else None,
        "to_state": str(to_state),
        "reason": clip(reason),
    }


def insert_changes(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Many changes in one executemany INSERT, on the session's connection (its transaction)."""
    if rows:
        session.connection().execute(insert(RunStateChange), list(rows))
        count_bulk_changes(session, rows)  # runs they finish, for /metrics (cp/metrics/commit_counts.py)
