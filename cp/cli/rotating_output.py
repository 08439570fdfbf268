"""A child process's output in a file that rotates by size: ``NAME.log``, then ``NAME.log.1`` (the
newest earlier file) up to ``NAME.log.N``; older output is dropped.

The child writes to a pipe; a thread of the parent copies it line by line into the file, so a
line is never split across two files and everything the child prints (a crash's traceback too)
is kept. When the file cannot be written (a full disk) lines are dropped and counted, never left
to fill the pipe: a child must not block on its own output.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cp.private_files import open_private

LINE_MAX = 64 * 1024  # bytes of one line read at once; a longer one is continued in the next write


@dataclass(frozen=True)
class Rotation:
    max_bytes: int = 10 * 2**20
    backups: int = 5


_PATH_LOCKS: dict[Path, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(path, threading.Lock())


class RotatingFile:
    """Appends bytes to ``path``; one write that would take it past ``max_bytes`` goes to a new file.

    Two writers of one path (a restarted child's output while something its previous run started
    still writes to the old pipe) share a lock, and each reopens the path when the other rotated it.
    """

    def __init__(self, path: Path, rotation: Rotation) -> None:
        self.path = path
        self.rotation = rotation
        self._lock = _lock_for(path)
        self._fd: int | None = self._open()
        self.size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return open_private(self.path, os.O_WRONLY | os.O_APPEND)

    def write(self, data: bytes) -> None:
        with self._lock:
            self._follow_rotation()
            self._write(data)

    def _follow_rotation(self) -> None:
        if self._fd is None:
            return
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(self._fd).st_ino:
            os.close(self._fd)
            self._fd = self._open()
        self.size = os.fstat(self._fd).st_size  # the other writer's lines count too

    def _write(self, data: bytes) -> None:
        if self.size and self.size + len(data) > self.rotation.max_bytes:
            self.rotate()
        if self._fd is None:  # the last rotation could not open a new file: try again
            self._fd = self._open()
            self.size = os.fstat(self._fd).st_size
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self.size += written

    def rotate(self) -> None:
        """``path`` becomes ``path.1``, each ``path.i`` becomes ``path.i+1``; the oldest is replaced."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for index in range(self.rotation.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.backup(index), self.backup(index + 1))
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, self.backup(1))
        self._fd = self._open()
        self.size = 0

    def backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ChildOutput:
    """A pipe for a child's stdout and stderr, copied into a ``RotatingFile`` by a thread."""

    def __init__(self, path: Path, rotation: Rotation) -> None:
        self.file = RotatingFile(path, rotation)
        self.dropped_lines = 0
        read_fd, self.write_fd = os.pipe()
        self._thread = threading.Thread(
            target=self._copy, args=(read_fd,), name=f"output {path.name}", daemon=True
        )
        self._thread.start()

    def _copy(self, read_fd: int) -> None:
        with open(read_fd, "rb") as pipe:
            for line in iter(lambda: pipe.readline(LINE_MAX), b""):
                try:
                    self.file.write(line)
                except OSError:
                    self.dropped_lines += 1
        self.file.close()

    def close_write_end(self) -> None:
        """The parent's copy: once the child (and whatever it started) closed theirs, the copy ends."""
        with contextlib.suppress(OSError):
            os.close(self.write_fd)

    def wait(self, timeout: float) -> bool:
        """True once everything the child wrote is in the file."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


@contextmanager
def child_output(path: Path, rotation: Rotation) -> Iterator[ChildOutput]:
    """Pass ``output.write_fd`` as the child's stdout inside the block; the parent's end closes after."""
    output = ChildOutput(path, rotation)
    try:
        yield output
    finally:
        output.close_write_end()
