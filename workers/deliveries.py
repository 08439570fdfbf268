"""How often each job message reached this daemon, kept on disk so it survives the daemon dying.

A message whose job kills the daemon is redelivered after it restarts; counting deliveries lets
the daemon give up after a limit instead of dying in a loop.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class DeliveryLog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, task_id: str) -> Path:
        return self.directory / hashlib.sha256(task_id.encode()).hexdigest()[:32]

    def record(self, task_id: str) -> int:
        """Count one more delivery of ``task_id`` and return the total, this one included."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(task_id)
        try:
            count = int(path.read_text(encoding="utf-8")) + 1
        except (OSError, ValueError):
            count = 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(count), encoding="utf-8")
        os.replace(tmp, path)
        return count

    def forget(self, task_id: str) -> None:
        """The job finished (in any state): its message will not come back."""
        self._path(task_id).unlink(missing_ok=True)
