"""The jobs running in this daemon process and how far each has got (for `inspect mycelial_runs`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime


@dataclass(frozen=True)
class RunProgress:
    task_id: str
    run_key: str
    pipeline: str
    attempt: int
    started_at: datetime
    rows_read: int = 0
    rows_written: int = 0


class RunBoard:
    """Updated by each job's thread as it reports, read by the remote-control thread."""

    def __init__(self) -> None:
        self._runs: dict[str, RunProgress] = {}
        self._lock = threading.Lock()

    def started(self, *, task_id: str, run_key: str, pipeline: str, attempt: int, now: datetime) -> None:
        with self._lock:
            self._runs[task_id] = RunProgress(
                task_id=task_id, run_key=run_key, pipeline=pipeline, attempt=attempt, started_at=now
            )

    def ended(self, task_id: str) -> None:
        with self._lock:
            self._runs.pop(task_id, None)

    def progressed(self, task_id: str, *, rows_read: int, rows_written: int) -> None:
        with self._lock:
            run = self._runs.get(task_id)
            if run is not None:
                self._runs[task_id] = replace(run, rows_read=rows_read, rows_written=rows_written)

    def rows_of(self, task_id: str) -> Callable[[int, int], None]:
        """What a job's report calls after each batch: (rows read, rows written) so far."""
        return lambda read, written: self.progressed(task_id, rows_read=read, rows_written=written)

    def snapshot(self) -> list[RunProgress]:
        """Every run on the board, the longest running first."""
        with self._lock:
            return sorted(self._runs.values(), key=lambda r: (r.started_at, r.task_id))
