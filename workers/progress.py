"""What the daemon's running jobs have done so far, for its heartbeats: rows and rows per second.

Each job notes its row counts after every batch; every heartbeat takes a snapshot, which gives each
run's rate since the previous snapshot (since the job started, for the first). At most
``MAX_PROGRESS_RUNS`` runs are reported, the longest-running first, so the heartbeat key stays
within its bound however many jobs run at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cp.protocol import RunProgress
from cp.settings import MAX_PROGRESS_RUNS


@dataclass
class _Tracked:
    run_key: str
    pipeline: str
    attempt: int
    started: float
    rows_read: int = 0
    rows_written: int = 0
    mark_at: float = 0.0  # time and rows written at the previous snapshot
    mark_rows: int = 0


def rate(rows: int, since_rows: int, *, now: float, since: float) -> float:
    """Rows per second between two readings; 0 for no time or rows going back (a new attempt)."""
    elapsed = now - since
    if elapsed <= 0 or rows < since_rows:
        return 0.0
    return round((rows - since_rows) / elapsed, 1)


class ProgressBoard:
    """Thread-safe: jobs write from their worker threads, the heartbeat thread reads."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, limit: int = MAX_PROGRESS_RUNS
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._runs: dict[str, _Tracked] = {}
        self._lock = threading.Lock()

    def start(self, task_id: str, *, run_key: str, pipeline: str, attempt: int) -> None:
        now = self._clock()
        with self._lock:
            self._runs[task_id] = _Tracked(run_key, pipeline, attempt, started=now, mark_at=now)

    def rows(self, task_id: str, *, read: int, written: int) -> None:
        with self._lock:
            tracked = self._runs.get(task_id)
            if tracked is not None:
                tracked.rows_read, tracked.rows_written = read, written

    def finish(self, task_id: str) -> None:
        with self._lock:
            self._runs.pop(task_id, None)

    def snapshot(self) -> list[RunProgress]:
        """Each run's progress, with its rate since the previous snapshot."""
        now = self._clock()
        with self._lock:
            tracked = sorted(self._runs.values(), key=lambda t: (t.started, t.run_key))[: self._limit]
            out = []
            for t in tracked:
                out.append(
                    RunProgress(
                        run_key=t.run_key,
                        pipeline=t.pipeline,
                        attempt=t.attempt,
                        rows_read=t.rows_read,
                        rows_written=t.rows_written,
                        rows_per_second=rate(t.rows_written, t.mark_rows, now=now, since=t.mark_at),
                        running_s=round(max(0.0, now - t.started), 1),
                    )
                )
                t.mark_at, t.mark_rows = now, t.rows_written
            return out
