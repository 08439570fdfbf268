"""How often each job message reached this daemon, kept on disk so it survives the daemon dying.

A message whose job kills the daemon is redelivered after it restarts; counting deliveries lets
the daemon give up after a limit instead of dying in a loop. The files are 0600 in a 0700 folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cp.private_files import open_private, private_dir


class DeliveryLog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, task_id: str) -> Path:
        return self.directory / hashlib.sha256(task_id.encode()).hexdigest()[:32]

    def record(self, task_id: str) -> int:
        """Count one more delivery of ``task_id`` and return the total, this one included."""
        private_dir(self.directory)
        path = self._path(task_id)
        try:
            count = int(path.read_text(encoding="utf-8")) + 1
        except (OSError, ValueError):
            count = 1
        tmp = path.with_suffix(".tmp")
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as fh:
            fh.write(str(count))
        os.replace(tmp, path)
        return count

    def forget(self, task_id: str) -> None:
        """The job finished (in any state): its message will not come back."""
        self._path(task_id).unlink(missing_ok=True)
