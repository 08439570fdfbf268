"""The daemon's last applied configuration, kept on local disk to survive control-plane outages.

The file is readable by the daemon's user only (0600, in a 0700 directory). Each write goes to its
own temporary file, so two writers never share one, and ``apply`` holds a lock on the directory
while it compares versions: an older push never replaces a newer configuration.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cp.private_files import private_dir
from cp.protocol import ApplyConfig


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: the version now stored, and whether the pushed one was older and left."""

    version: int
    ignored: bool


class LocalState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "applied-config.json"
        self._lock_path = directory / "applied-config.lock"

    def load(self) -> ApplyConfig | None:
        """The stored config, or None when there is none or it cannot be read."""
        try:
            self.path.chmod(0o600)  # a file an older release wrote 0644
            return ApplyConfig.model_validate_json(self.path.read_bytes())
        except (OSError, ValueError):
            return None

    def apply(self, config: ApplyConfig) -> Applied:
        """Store ``config`` unless a newer version is stored already (the same version is stored
        again). Threads and processes of one daemon take turns here."""
        with self._locked():
            stored = self.load()
            if stored is not None and stored.version > config.version:
                return Applied(version=stored.version, ignored=True)
            self.save(config)
            return Applied(version=config.version, ignored=False)

    def save(self, config: ApplyConfig) -> None:
        """Write atomically: a crash leaves either the old file or the new one, never half."""
        self._make_directory()
        fd, tmp = tempfile.mkstemp(prefix=".applied-config.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:  # mkstemp made it 0600
                json.dump(config.model_dump(mode="json"), fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _make_directory(self) -> None:
        private_dir(self.directory)  # 0700, its missing parents too; an existing one tightened

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._make_directory()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one open file each: threads exclude each other too
            yield
        finally:
            os.close(fd)
