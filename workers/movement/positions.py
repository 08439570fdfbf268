"""Resume positions for SQL sources: a cursor with its boundary rows, a key, or an offset.

Incremental reads ask for ``cursor >= last`` (not ``>``): rows that share the last cursor value may
straddle a batch boundary or arrive later, so the rows already loaded at that value are remembered
by hash and skipped, and nothing is skipped or loaded twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from workers.movement.interface import Position, SourceBatch
from workers.movement.types import Row
from workers.movement.values import decode, encode, row_hash


class CursorTracker:
    """Filters rows ordered by a cursor column and produces the position after each batch."""

    def __init__(self, cursor_index: int, start: Position | None) -> None:
        self.index = cursor_index
        self.value: Any = decode(start["cursor"]) if start and "cursor" in start else None
        self.seen: Counter[str] = Counter(start.get("seen", {})) if start else Counter()
        self._skip = Counter(self.seen)

    @property
    def start_value(self) -> Any:
        return self.value

    def feed(self, rows: Iterable[Row]) -> list[Row]:
        kept: list[Row] = []
        for row in rows:
            value = row[self.index]
            if value is None:
                continue  # rows without a cursor value cannot be placed in the order; never loaded
            digest = row_hash(row)
            if value == self.value and self._skip[digest] > 0:
                self._skip[digest] -= 1
                continue
            if value != self.value:
                self.value, self.seen, self._skip = value, Counter(), Counter()
            self.seen[digest] += 1
            kept.append(row)
        return kept

    def position(self) -> Position:
        return {"cursor": encode(self.value), "seen": dict(self.seen)}


class KeyTracker:
    """Position = the last key seen, for keyset-ordered reads (``WHERE key > last ORDER BY key``)."""

    def __init__(self, key_indexes: list[int], start: Position | None) -> None:
        self.indexes = key_indexes
        self.last: list[Any] | None = [decode(v) for v in start["key"]] if start and "key" in start else None

    def feed(self, rows: list[Row]) -> list[Row]:
        if rows:
            self.last = [rows[-1][i] for i in self.indexes]
        return rows

    def position(self) -> Position:
        return {"key": [encode(v) for v in self.last]} if self.last is not None else {}


class OffsetTracker:
    """Position = rows already read, for sources with neither cursor nor key (ordered by all columns)."""

    def __init__(self, start: Position | None) -> None:
        self.offset = int(start.get("offset", 0)) if start else 0

    def feed(self, rows: list[Row]) -> list[Row]:
        self.offset += len(rows)
        return rows

    def position(self) -> Position:
        return {"offset": self.offset}


Tracker = CursorTracker | KeyTracker | OffsetTracker


def tracked(raw_batches: Iterator[list[Row]], tracker: Tracker) -> Iterator[SourceBatch]:
    for rows in raw_batches:
        kept = tracker.feed(rows)
        yield SourceBatch(rows=kept, position=tracker.position())
