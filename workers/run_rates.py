"""Each heartbeat's view of the running jobs: rows so far and rows per second since the last one.

The run board (workers/progress.py) holds each job's rows after every batch; a heartbeat turns
its snapshot into bounded ``JobProgress`` entries, the rate measured against what the previous
heartbeat saw (against the job's start for the first). At most ``MAX_PROGRESS_RUNS`` jobs are
reported, the longest-running first, so the heartbeat key stays within its bound.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime

from cp.protocol import JobProgress
from cp.settings import MAX_PROGRESS_RUNS
from workers.progress import RunProgress

RATE_MAX = 1e12  # the contract's bound; a clock step could make a rate absurd
RUNNING_MAX = 1e9


def rate(rows: int, since_rows: int, *, seconds: float) -> float:
    """Rows per second between two readings; 0 without time between them or when rows went back."""
    if seconds <= 0 or rows < since_rows:
        return 0.0
    return min(RATE_MAX, round((rows - since_rows) / seconds, 1))


class RunRates:
    """Remembers what the previous heartbeat saw of each job; forgets jobs that ended."""

    def __init__(self, *, limit: int = MAX_PROGRESS_RUNS) -> None:
        self._limit = limit
        self._seen: dict[str, tuple[datetime, int]] = {}  # task id -> (when, rows written)
        self._lock = threading.Lock()

    def report(self, runs: Sequence[RunProgress], *, now: datetime) -> list[JobProgress]:
        shown = sorted(runs, key=lambda r: (r.started_at, r.task_id))[: self._limit]
        with self._lock:
            seen: dict[str, tuple[datetime, int]] = {}
            out = []
            for run in shown:
                then, rows_then = self._seen.get(run.task_id, (run.started_at, 0))
                out.append(
                    JobProgress(
                        run_key=run.run_key,
                        pipeline=run.pipeline,
                        attempt=run.attempt,
                        rows_read=run.rows_read,
                        rows_written=run.rows_written,
                        rows_per_second=rate(
                            run.rows_written, rows_then, seconds=(now - then).total_seconds()
                        ),
                        running_s=min(
                            RUNNING_MAX, round(max(0.0, (now - run.started_at).total_seconds()), 1)
                        ),
                    )
                )
                seen[run.task_id] = (now, run.rows_written)
            self._seen = seen
        return out
