"""A daemon's log records on disk until the control plane has stored them.

Records are appended to segment files of JSON lines (``seg-<first seq>.jsonl``, 0600) as they are
logged, so they survive a broker or control-plane outage and a restart alike. The sender reads
them in order and acknowledges what the control plane stored; a segment whose records are all
acknowledged is deleted. The spool is bounded: past ``max_bytes`` its oldest segment is deleted
and the records in it that were never sent are counted in ``dropped`` until a batch reports them.
The highest acknowledged seq and that count are kept in ``state.json``.

Numbering: a record's seq is one more than the previous one; a new process starts a new segment
(so seqs within a segment are consecutive) after the highest seq on disk. A daemon whose spool is
lost starts at 1000 x the Unix time in milliseconds, past anything it numbered before (no daemon
logs a thousand records a millisecond), so its new records never collide with stored ones.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cp.private_files import open_private, private_dir

STATE_FILE = "state.json"
SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".jsonl"


@dataclass
class _Segment:
    path: Path
    first: int
    last: int  # first - 1 while empty
    size: int


def _fresh_seq() -> int:
    return int(time.time() * 1000) * 1000


class LogSpool:
    """Thread-safe: loggers append from any thread, one sender reads and acknowledges."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 * 2**10, min(4 * 2**20, max_bytes // 16))
        if self.segment_bytes * 4 > max_bytes:
            raise ValueError(f"a spool of {max_bytes} bytes needs segments of at most a quarter of it")
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._writer: Any = None  # the newest segment, open for appending
        self.acked = 0
        self.dropped = 0  # never-sent records dropped, not yet reported in an acknowledged batch
        self.dropped_total = 0  # over this process's life
        self._read_through = 0  # the highest seq handed to the sender
        self._read_at: tuple[int, int] | None = None  # (segment first seq, offset) after it
        private_dir(directory)
        self._load()

    # --- writing

    def append(self, record: dict[str, Any]) -> int:
        """Number ``record``, write it, and return its seq."""
        with self._lock:
            segment = self._current()
            seq = segment.last + 1
            line = json.dumps({"seq": seq, **record}, separators=(",", ":"), ensure_ascii=False) + "\n"
            data = line.encode("utf-8")
            self._writer.write(data)
            self._writer.flush()
            segment.last, segment.size = seq, segment.size + len(data)
            if segment.size >= self.segment_bytes:
                self._close_writer()
            self._enforce_bound()
            return seq

    def _current(self) -> _Segment:
        if self._writer is not None:
            return self._segments[-1]
        after = max([self.acked, *(s.last for s in self._segments)])
        first = after + 1 if after else _fresh_seq()
        path = self.directory / f"{SEGMENT_PREFIX}{first:016d}{SEGMENT_SUFFIX}"
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)
        self._writer = os.fdopen(fd, "ab")
        segment = _Segment(path, first, first - 1, 0)
        self._segments.append(segment)
        return segment

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _enforce_bound(self) -> None:
        while sum(s.size for s in self._segments) > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments.pop(0)
            unsent = oldest.last - max(oldest.first - 1, self._read_through, self.acked)
            if unsent > 0:
                self.dropped += unsent
                self.dropped_total += unsent
                self._save_state()
            oldest.path.unlink(missing_ok=True)

    # --- reading

    def unread(self) -> int:
        """Records written and not yet handed to the sender (about: gaps are not counted out)."""
        with self._lock:
            newest = self._segments[-1].last if self._segments else 0
            return max(0, newest - self._read_through)

    def read(self, *, limit: int, max_bytes: int) -> list[dict[str, Any]]:
        """The next records in seq order, at most ``limit`` of them and about ``max_bytes``."""
        with self._lock:
            records: list[dict[str, Any]] = []
            budget = max_bytes
            for segment in [s for s in self._segments if s.last > self._read_through]:
                offset = self._read_at[1] if self._read_at and self._read_at[0] == segment.first else 0
                with segment.path.open("rb") as fh:
                    fh.seek(offset)
                    while len(records) < limit and budget > 0:
                        line = fh.readline()
                        if not line.endswith(b"\n"):
                            break  # the end, or a line still being written
                        offset += len(line)
                        record = _parse(line)
                        if record is None or record["seq"] <= self._read_through:
                            continue
                        records.append(record)
                        budget -= len(line)
                        self._read_through = record["seq"]
                self._read_at = (segment.first, offset)
                if len(records) >= limit or budget <= 0:
                    break
            return records

    def rewind(self) -> None:
        """Read again from the first record not acknowledged (what was handed out may be lost)."""
        with self._lock:
            self._read_through, self._read_at = self.acked, None

    # --- acknowledging

    def ack(self, seq: int, *, reported_dropped: int = 0) -> None:
        """The control plane stored every record up to ``seq``, and heard of ``reported_dropped``."""
        with self._lock:
            self.acked = max(self.acked, seq)
            self._read_through = max(self._read_through, self.acked)
            self.dropped = max(0, self.dropped - reported_dropped)
            while self._segments and self._segments[0].last <= self.acked:
                done = self._segments.pop(0)
                if not self._segments:
                    self._close_writer()  # the newest is done too: the next record starts one
                done.path.unlink(missing_ok=True)
            self._save_state()

    def close(self) -> None:
        with self._lock:
            self._close_writer()

    def size(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    # --- disk

    def _save_state(self) -> None:
        path, tmp = self.directory / STATE_FILE, self.directory / (STATE_FILE + ".tmp")
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as fh:
            json.dump({"acked": self.acked, "dropped": self.dropped}, fh)
        os.replace(tmp, path)

    def _load(self) -> None:
        try:
            state = json.loads((self.directory / STATE_FILE).read_text(encoding="utf-8"))
            self.acked, self.dropped = int(state["acked"]), int(state["dropped"])
        except (OSError, ValueError, KeyError, TypeError):
            self.acked, self.dropped = 0, 0
        found = []
        for path in self.directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"):
            try:
                first = int(path.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)])
            except ValueError:
                continue
            found.append((first, path))
        for first, path in sorted(found):
            segment = _scan(path, first)
            if segment.last <= self.acked:
                path.unlink(missing_ok=True)
            else:
                self._segments.append(segment)
        self._read_through = self.acked


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("seq"), int) else None


def _scan(path: Path, first: int) -> _Segment:
    """A segment as found on disk; a line cut short by a crash is cut off."""
    last, good = first - 1, 0
    with path.open("rb") as fh:
        for line in fh:
            record = _parse(line) if line.endswith(b"\n") else None
            if record is None:
                break
            last, good = record["seq"], good + len(line)
    if good != path.stat().st_size:
        os.truncate(path, good)
    return _Segment(path, first, last, good)
