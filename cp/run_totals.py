"""A run's figures over all its attempts. Pure: the run row and its attempt rows in, totals out.

The run row holds the current attempt's counters (live while it runs, reset when it is retried);
each earlier attempt's are kept in its ``RunAttempt`` row when it ends. Rows are summed over the
attempts: the work done, which after a failed ``replace`` attempt (its staging table discarded)
can exceed what the destination holds. The duration spans the first attempt's start to the
run's end; the running time adds up the attempts' own times, without the waits between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cp.models import Run, RunAttempt


@dataclass(frozen=True)
class RunTotals:
    rows_read: int
    rows_written: int
    first_started_at: datetime | None
    duration_s: float | None  # first start to the run's end; None until the run ended
    running_s: float | None  # the attempts' own running times, summed


def run_totals(run: Run, attempts: Iterable[RunAttempt]) -> RunTotals:
    earlier = [a for a in attempts if a.attempt != run.attempt]
    starts = [t for t in [run.started_at, *(a.started_at for a in earlier)] if t is not None]
    first_start = min(starts) if starts else None
    spans = [_span(a.started_at, a.finished_at) for a in earlier] + [_span(run.started_at, run.finished_at)]
    measured = [s for s in spans if s is not None]
    return RunTotals(
        rows_read=run.rows_read + sum(a.rows_read for a in earlier),
        rows_written=run.rows_written + sum(a.rows_written for a in earlier),
        first_started_at=first_start,
        duration_s=_span(first_start, run.finished_at),
        running_s=round(sum(measured), 3) if measured else None,
    )


def _span(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)
