"""CSV and JSON-lines files as sources: a single file, or a folder whose files are each loaded once.

This module holds what both kinds share; ``csv_files`` and ``jsonl_files`` hold each kind's reading.

Options (both kinds):

- ``path``: a file or a folder, an absolute path under the daemon's allowed roots (the daemon
  refuses any other before the connector runs, see ``workers.confinement``). It is not a secret
  option: ``mycelial apply`` refuses a reference here (one stored by an older release is still
  resolved, and its value scrubbed from errors). A folder's files may be symbolic links, but only
  to files inside that folder: every file is checked where it really is once it is open.
- ``pattern``: the glob a folder's file names must match (not recursive); default ``*.csv`` or
  ``*.jsonl``. Names starting with ``.`` or ending in ``.tmp`` / ``.part`` are never read: write a
  file under such a name, then rename it once it is complete.
- ``columns``: ``{name: type}``, the schema in order; types are the logical type names, a decimal
  optionally as ``decimal(18,4)``. Without it a CSV's columns are its header's names, all ``text``,
  and a JSON-lines source takes the keys of its first record, typed from their JSON values. Give it
  for a folder, so the schema does not depend on which file happens to come first.

Values: ``bytes`` are standard base64 with padding, in both formats; dates and timestamps are ISO
8601; a ``timestamp`` must have no UTC offset, a ``timestamptz`` without one is taken as UTC;
booleans are ``true/false/t/f/yes/no/1/0`` in any case. See ``csv_files`` and ``jsonl_files`` for
what is particular to each format.

The pipeline's source table is only a label: ``path`` and ``pattern`` say what to read.

Positions: ``{"file": name, "line": n}`` for a single file and ``{"done": [names], "file": name or
None, "line": n}`` for a folder, where ``line`` counts the file's lines already loaded (a CSV
header included), so a killed run resumes inside the file. A folder's position carries over from
run to run: files are loaded in name order, each once, by name (rewriting a loaded file does not
load it again), and files that appear later are loaded by the next run. That position is also a
folder's incremental cursor, so ``cursor_column`` is not used; a single file refuses one.
"""

from __future__ import annotations

import base64
import codecs
import json
import os
import re
from abc import abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from workers.confinement.paths import inside, opened_path
from workers.movement.errors import MovementError
from workers.movement.interface import Position, ReadSpec, Source, SourceBatch
from workers.movement.types import Column, LogicalType, Row, Schema
from workers.secrets import resolve

T = LogicalType

_TYPE = re.compile(r"^\s*([A-Za-z]+)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")
_RANGES = {T.INTEGER: (-(2**31), 2**31 - 1), T.BIGINT: (-(2**63), 2**63 - 1)}
_BOOLEANS = {
    **dict.fromkeys(("true", "t", "yes", "1"), True),
    **dict.fromkeys(("false", "f", "no", "0"), False),
}
_WHAT = {
    T.INTEGER: "an integer",
    T.BIGINT: "a bigint",
    T.FLOAT: "a float",
    T.DECIMAL: "a decimal",
    T.TEXT: "text",
    T.BOOLEAN: "a boolean",
    T.DATE: "a date",
    T.TIMESTAMP: "a timestamp",
    T.TIMESTAMPTZ: "a timestamptz",
    T.BYTES: "base64 bytes",
    T.JSON: "JSON",
}
_CONVERSION_ERRORS = (ValueError, ArithmeticError, TypeError)


class BadValue(ValueError):
    """A value that does not fit its column; ``reason`` (if any) replaces "is not a <type>"."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


def open_file(path: Path) -> BinaryIO:
    """Open a file to read; one place, so tests can watch how much of a file is read."""
    return path.open("rb")


def declared_columns(raw: Any, where: str) -> tuple[Column, ...] | None:
    """The ``columns`` option as logical columns, or None when it is not given."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise MovementError(f"{where}: option 'columns' must map column names to types")
    columns = []
    known = ", ".join(t.value for t in T)
    for name, spec in raw.items():
        match = _TYPE.match(spec) if isinstance(spec, str) else None
        kind = match.group(1).lower() if match else ""
        if match is None or kind not in {t.value for t in T} or (match.group(2) and kind != "decimal"):
            raise MovementError(f"{where}: column {name!r} has unknown type {spec!r} (known: {known})")
        precision = int(match.group(2)) if match.group(2) else None
        scale = int(match.group(3)) if match.group(3) else None
        columns.append(Column(str(name), T(kind), precision=precision, scale=scale))
    return tuple(columns)


# --- values --------------------------------------------------------------------------------


def _integer(kind: LogicalType) -> Callable[[int], int]:
    low, high = _RANGES[kind]

    def check(value: int) -> int:
        if low <= value <= high:
            return value
        raise BadValue(f"is out of range for {kind}")

    return check


def _decimal(text: str) -> Decimal:
    value = Decimal(text)
    if not value.is_finite():
        raise BadValue()
    return value


def _boolean(text: str) -> bool:
    value = _BOOLEANS.get(text.strip().lower())
    if value is None:
        raise BadValue()
    return value


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is not None:
        raise BadValue("has a UTC offset, which a timestamp column cannot keep (use timestamptz)")
    return value


def _in_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _timestamptz(text: str) -> datetime:
    return _in_utc(datetime.fromisoformat(text.strip()))


def text_parser(kind: LogicalType) -> Callable[[str], Any]:
    """Text (a CSV field) → the column's Python value; failures raise ValueError or ArithmeticError."""
    if kind in _RANGES:
        check = _integer(kind)
        return lambda text: check(int(text))
    parsers: dict[LogicalType, Callable[[str], Any]] = {
        T.FLOAT: float,
        T.DECIMAL: _decimal,
        T.TEXT: str,
        T.BOOLEAN: _boolean,
        T.DATE: lambda text: date.fromisoformat(text.strip()),
        T.TIMESTAMP: _timestamp,
        T.TIMESTAMPTZ: _timestamptz,
        T.BYTES: lambda text: base64.b64decode(text, validate=True),
        T.JSON: json.loads,
    }
    return parsers[kind]


def bad_value(label: str, line: int, column: Column, shown: str, exc: Exception) -> MovementError:
    """The error for a value that does not fit its column; ``shown`` is the value as the file has it."""
    reason = exc.reason if isinstance(exc, BadValue) and exc.reason else f"is not {_WHAT[column.type]}"
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return MovementError(f"{label} line {line}: column {column.name!r}: {shown} {reason}")


def _inside_folder(done: list[str], name: str, line: int) -> Position:
    return {"done": list(done), "file": name, "line": line}


# --- reading -------------------------------------------------------------------------------


class Lines:
    """A binary file's lines as text, counted."""

    def __init__(self, handle: BinaryIO, label: str) -> None:
        self._lines = iter(handle)
        self.label = label
        self.count = 0

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        data = next(self._lines)
        self.count += 1
        if self.count == 1 and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise MovementError(f"{self.label} line {self.count}: not valid UTF-8") from None

    def skip_to(self, line: int) -> None:
        """Consume lines until ``line`` lines have been read (or the file ends)."""
        while self.count < line and next(self, None) is not None:
            pass


class FileSource(Source):
    """What CSV and JSON-lines sources share: files, folders, positions and batches."""

    default_pattern: ClassVar[str]

    def __init__(self, name: str, options: dict[str, Any], *, home: Path) -> None:
        super().__init__(name, options, home=home)
        self.where = f"source {name}"
        self.columns: tuple[Column, ...] | None = None

    @property
    def root(self) -> Path:
        if not self.options.get("path"):
            raise MovementError(f"{self.where}: option 'path' is required")
        path = Path(resolve(str(self.options["path"]))).expanduser()
        return path if path.is_absolute() else self.home / path

    @property
    def resumes_across_runs(self) -> bool:
        """A folder remembers its loaded files from run to run; a single file starts over."""
        return self.root.is_dir()

    def open(self) -> None:
        if not self.root.exists():
            raise MovementError(f"{self.where}: {self.root} does not exist")
        self._real_root = os.path.realpath(self.root)
        self.columns = declared_columns(self.options.get("columns"), self.where)

    def close(self) -> None:
        pass

    def files(self) -> list[Path]:
        """The files to read, in name order: the path itself, or the folder's finished matching files."""
        root = self.root
        if not root.is_dir():
            return [root]
        pattern = self.options.get("pattern") or self.default_pattern
        try:
            entries = list(root.iterdir())
        except OSError as exc:
            raise MovementError(f"{self.where}: cannot list {root}: {exc.strerror}") from None
        names = [
            p
            for p in entries
            if fnmatchcase(p.name, pattern)
            and not p.name.startswith(".")
            and not p.name.endswith((".tmp", ".part"))
            and p.is_file()
        ]
        return sorted(names, key=lambda p: p.name)

    def _check(self, spec: ReadSpec) -> None:
        if spec.query is not None:
            raise MovementError(f"{self.where}: file sources take no query")
        if spec.cursor_column and not self.root.is_dir():
            raise MovementError(
                f"{self.where}: a single file has no cursor order (cursor_column {spec.cursor_column!r});"
                " point path at a folder, whose new files are the increments"
            )

    def _open(self, path: Path) -> BinaryIO:
        try:
            handle = open_file(path)
        except OSError as exc:
            raise MovementError(f"{self.where}: cannot read {path}: {exc.strerror}") from None
        # checked once open, where the file really is: a link in a folder cannot lead out of it,
        # and a link swapped in after the daemon checked the path is caught here
        root = self.__dict__.get("_real_root") or os.path.realpath(self.root)
        really = opened_path(handle.fileno())
        if really is not None and not inside(really, root):
            handle.close()
            raise MovementError(f"{self.where}: {path} leads to {really}, outside {root}; not read")
        return handle

    def schema(self, spec: ReadSpec) -> Schema:
        self._check(spec)
        if self.columns is not None:
            return Schema(self.columns)
        for path in self.files():
            columns = self.infer(path)
            if columns is not None:
                return Schema(columns)
        raise MovementError(
            f"{self.where}: no data in {self.root} to take the columns from; give the 'columns' option"
        )

    def batches(self, spec: ReadSpec, schema: Schema) -> Iterator[SourceBatch]:
        self._check(spec)
        start = spec.start or {}
        size = max(1, spec.batch_size)
        root = self.root
        if not root.is_dir():
            name = root.name
            skip = int(start.get("line") or 0) if start.get("file") == name else 0
            yield from self._file_batches(
                root, schema, size, skip, lambda n: {"file": name, "line": n}, None, spec.as_stored
            )
            return
        done: list[str] = sorted(start.get("done") or [])
        finished = set(done)
        current, line = start.get("file"), int(start.get("line") or 0)
        for path in self.files():
            if path.name in finished:
                continue
            before, name = done, path.name
            done = sorted([*done, name])
            yield from self._file_batches(
                path,
                schema,
                size,
                line if name == current else 0,
                partial(_inside_folder, before, name),
                {"done": done, "file": None, "line": 0},
                spec.as_stored,
            )

    def _file_batches(
        self,
        path: Path,
        schema: Schema,
        size: int,
        skip: int,
        at: Callable[[int], Position],
        end: Position | None,
        stored: frozenset[str],
    ) -> Iterator[SourceBatch]:
        """One file's rows in batches; a folder's file ends with a batch (maybe empty) marking it done."""
        rows: list[Row] = []
        last = skip
        for last, rows in self.chunks(path, schema, skip, size, stored):
            if len(rows) == size:
                yield SourceBatch(rows, at(last))
                rows = []
        if end is not None:
            yield SourceBatch(rows, end)
        elif rows:
            yield SourceBatch(rows, at(last))

    @abstractmethod
    def infer(self, path: Path) -> tuple[Column, ...] | None:
        """The columns ``path`` suggests, or None when it holds no data."""

    @abstractmethod
    def chunks(
        self, path: Path, schema: Schema, skip: int, size: int, stored: frozenset[str]
    ) -> Iterator[tuple[int, list[Row]]]:
        """The rows of ``path`` after its first ``skip`` lines, ``size`` at a time (the last chunk
        shorter, maybe empty), each chunk with the count of lines read so far; the ``stored``
        columns may keep the file's text (see ``Source.stored_columns``)."""
