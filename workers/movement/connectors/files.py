"""CSV and JSON-lines files as sources: a single file, or a folder whose files are each loaded once.

Options (both kinds):

- ``path``: a file or a folder. A relative path resolves against the daemon's home; ``${env:..}``
  references are resolved at run time.
- ``pattern``: the glob a folder's file names must match (not recursive); default ``*.csv`` or
  ``*.jsonl``. Names starting with ``.`` or ending in ``.tmp`` / ``.part`` are never read: write a
  file under such a name, then rename it once it is complete.
- ``columns``: ``{name: type}``, the schema in order; types are the logical type names, a decimal
  optionally as ``decimal(18,4)``. Without it a CSV's columns are its header's names, all ``text``,
  and a JSON-lines source takes the keys of its first record, typed from their JSON values. Give it
  for a folder, so the schema does not depend on which file happens to come first.

CSV options: ``delimiter`` (default ``,``); ``header`` (default true: columns are found in the
header by name; without a header, ``columns`` is required and fields are taken in its order);
``null`` (default the empty string). A field equal to ``null`` is NULL, except that in ``text`` and
``bytes`` columns a quoted field is always a value, as in PostgreSQL's ``COPY ... CSV``: ``a,,b``
holds NULL, ``a,"",b`` the empty string. Blank lines are skipped. Files are UTF-8 (a BOM is
allowed), with ``\\n`` or ``\\r\\n`` line ends.

Values: ``bytes`` are standard base64 with padding, in both formats; dates and timestamps are ISO
8601; a ``timestamp`` must have no UTC offset, a ``timestamptz`` without one is taken as UTC;
booleans are ``true/false/t/f/yes/no/1/0`` in any case. JSON-lines numbers are read exactly, so
decimals keep every digit, and numbers and booleans may also come as strings; a missing key is
NULL and keys outside the schema are ignored; a JSON string in a ``json`` column stays a string,
while CSV ``json`` fields hold JSON text.

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
import csv
import json
import re
from abc import abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from functools import partial
from itertools import chain, islice, tee
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

from workers.movement import plain
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
# a quoted field up to its closing quote, where "" is a quote inside it
_QUOTED = re.compile(r'"[^"]*(?:""[^"]*)*"?')
_CONVERSION_ERRORS = (ValueError, ArithmeticError, TypeError)
_TZINFO = attrgetter("tzinfo")
_RECORDS = 500  # CSV records read, then converted, at a time
_LITERAL = (T.TEXT, T.BYTES)  # the types where a quoted field equal to the null marker is a value


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


def _integers(kind: LogicalType) -> Callable[[Sequence[str]], list[int]]:
    low, high = _RANGES[kind]

    def integers(texts: Sequence[str]) -> list[int]:
        values = list(map(int, texts))
        if values and (min(values) < low or max(values) > high):
            raise BadValue()
        return values

    return integers


def _decimals(texts: Sequence[str]) -> list[Decimal]:
    values = list(map(Decimal, texts))
    if not all(map(Decimal.is_finite, values)):
        raise BadValue()
    return values


def _timestamps(texts: Sequence[str]) -> list[datetime]:
    values = list(map(datetime.fromisoformat, texts))
    if any(map(_TZINFO, values)):
        raise BadValue()
    return values


def _timestamptzs(texts: Sequence[str]) -> list[datetime]:
    values = list(map(datetime.fromisoformat, texts))
    if list(map(_TZINFO, values)).count(UTC) == len(values):
        return values
    return list(map(_in_utc, values))


ColumnParser = Callable[[Sequence[str]], Sequence[Any]]

# a whole column's fields in their usual form, converted in C loops; anything else fails
_COLUMNS: dict[LogicalType, ColumnParser] = {
    T.INTEGER: _integers(T.INTEGER),
    T.BIGINT: _integers(T.BIGINT),
    T.DECIMAL: _decimals,
    T.BOOLEAN: lambda texts: list(map(_BOOLEANS.__getitem__, texts)),
    T.DATE: lambda texts: list(map(date.fromisoformat, texts)),
    T.TIMESTAMP: _timestamps,
    T.TIMESTAMPTZ: _timestamptzs,
}


def column_parser(kind: LogicalType) -> ColumnParser | None:
    """Many CSV fields of one column → their values, or None for text, which stays as it is.

    Fields in their usual form are converted without Python code per value; others go through
    ``text_parser`` one by one. Raises on a value that does not fit, without saying which.
    """
    if kind is T.TEXT:
        return None
    parse, usual = text_parser(kind), _COLUMNS.get(kind)

    def column(texts: Sequence[str]) -> Sequence[Any]:
        if usual is not None:
            try:
                return usual(texts)
            except (*_CONVERSION_ERRORS, KeyError):
                pass
        return list(map(parse, texts))

    return column


def _iso(parse: Callable[[str], Any], *, offsets: bool = True) -> Callable[[Sequence[str]], bool]:
    def check(texts: Sequence[str]) -> bool:
        if not plain.iso(texts):
            return False
        try:
            values = list(map(parse, texts))  # the calendar: an invalid date is an error with its line
        except ValueError:
            return False
        return offsets or not any(map(_TZINFO, values))

    return check


#: per type, whether a column's fields are all in a plain form (see ``plain``; booleans in the words
#: of _BOOLEANS, timestamps without a UTC offset, which ``text_parser`` refuses)
_PLAIN: dict[LogicalType, Callable[[Sequence[str]], bool]] = {
    T.INTEGER: plain.integer,
    T.BIGINT: plain.integer,
    T.FLOAT: plain.number,
    T.DECIMAL: plain.number,
    T.BOOLEAN: lambda texts: set(texts) <= _BOOLEANS.keys(),
    T.DATE: _iso(date.fromisoformat),
    T.TIMESTAMP: _iso(datetime.fromisoformat, offsets=False),
    T.TIMESTAMPTZ: _iso(datetime.fromisoformat),
}


def plain_parser(kind: LogicalType) -> ColumnParser:
    """Like ``column_parser``, but a column whose fields are all plain (see _PLAIN) stays text."""
    parse, plain = column_parser(kind), _PLAIN[kind]
    assert parse is not None
    return lambda texts: texts if plain(texts) else parse(texts)


def plain_json(value: Any) -> Any:
    """A parsed JSON value with the exact decimals of the reader turned back into floats."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    return value


def json_parser(kind: LogicalType) -> Callable[[Any], Any]:
    """A JSON value (numbers as Decimal or int) → the column's Python value."""
    from_text = text_parser(kind)
    if kind in _RANGES:
        check = _integer(kind)

        def integer(value: Any) -> int:
            if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return check(value)
            if isinstance(value, str):
                return check(int(value))
            raise BadValue()

        return integer
    if kind is T.FLOAT:

        def to_float(value: Any) -> float:
            if isinstance(value, int | float | Decimal | str) and not isinstance(value, bool):
                return float(value)
            raise BadValue()

        return to_float
    if kind is T.DECIMAL:

        def to_decimal(value: Any) -> Decimal:
            if isinstance(value, int | Decimal | str) and not isinstance(value, bool):
                return _decimal(str(value))
            raise BadValue()

        return to_decimal
    if kind is T.TEXT:

        def to_text(value: Any) -> str:
            if isinstance(value, str):
                return value
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, int | Decimal):
                return str(value)
            raise BadValue()

        return to_text
    if kind is T.BOOLEAN:

        def to_boolean(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str):
                return _boolean(value)
            raise BadValue()

        return to_boolean
    if kind is T.JSON:
        return plain_json

    def from_string(value: Any) -> Any:
        if isinstance(value, str):
            return from_text(value)
        raise BadValue()

    return from_string


def json_type(value: Any) -> LogicalType:
    """The logical type a JSON value suggests, for a schema taken from a first record."""
    if isinstance(value, bool):
        return T.BOOLEAN
    if isinstance(value, int):
        return T.BIGINT
    if isinstance(value, Decimal | float):
        return T.FLOAT
    if isinstance(value, dict | list):
        return T.JSON
    return T.TEXT


def bad_value(label: str, line: int, column: Column, shown: str, exc: Exception) -> MovementError:
    """The error for a value that does not fit its column; ``shown`` is the value as the file has it."""
    reason = exc.reason if isinstance(exc, BadValue) and exc.reason else f"is not {_WHAT[column.type]}"
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return MovementError(f"{label} line {line}: column {column.name!r}: {shown} {reason}")


def csv_value(label: str, line: int, column: Column, text: str) -> Any:
    """A CSV field as its column's value, or the error naming where it does not fit."""
    try:
        return text_parser(column.type)(text)
    except _CONVERSION_ERRORS as exc:
        raise bad_value(label, line, column, repr(text), exc) from None


def _column(parse: ColumnParser, texts: Sequence[str | None], nulls: bool) -> Sequence[Any]:
    """A column's values from its fields, None (NULL) among them when ``nulls``."""
    if not nulls:
        return parse(cast(Sequence[str], texts))
    values = iter(parse([t for t in texts if t is not None]))
    return [None if t is None else next(values) for t in texts]


def _positions(values: Sequence[Any], value: Any) -> Iterator[int]:
    """Where ``value`` is in ``values``, found by C loops."""
    k = -1
    while True:
        try:
            k = values.index(value, k + 1)
        except ValueError:
            return
        yield k


def _ends(start: int, records: list[list[str]], count: int | None) -> list[int]:
    """The count of lines read at the end of each record, from ``start``: one line per record, unless
    quoted fields hold line breaks (lines are split at ``\n`` only, so a field has each one it spans)."""
    if count is not None and count - start == len(records):
        return list(range(start + 1, count + 1))
    ends, end = [], start
    for fields in records:
        end += 1 + sum(field.count("\n") for field in fields)
        ends.append(end)
    return ends


def _inside_folder(done: list[str], name: str, line: int) -> Position:
    return {"done": list(done), "file": name, "line": line}


def _end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    match = pattern.match(text, pos)
    return match.end() if match else pos


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


class CsvLines:
    """A CSV file's records from ``csv.reader``, fed the file's lines with no Python code run per line.

    ``reader.line_num + skipped`` counts the file's lines read so far (a record may span several).
    With ``keep_raw``, a lagging copy of the lines gives a record's raw text when it is asked for.
    """

    def __init__(self, handle: BinaryIO, label: str, delimiter: str, *, keep_raw: bool) -> None:
        lines = iter(handle)
        first = next(lines, None)
        if first is not None and first.startswith(codecs.BOM_UTF8):
            first = first[len(codecs.BOM_UTF8) :]
        self._lines = chain(() if first is None else (first,), lines)
        text: Iterator[str] = map(bytes.decode, self._lines)
        self._kept: Iterator[str] | None = None
        self._kept_to = 0  # the reader's lines the kept copy has passed
        if keep_raw:
            text, self._kept = tee(text)
        self.reader = csv.reader(text, delimiter=delimiter)
        self.label = label
        self.skipped = 0

    @property
    def count(self) -> int:
        return self.reader.line_num + self.skipped

    @contextmanager
    def errors(self) -> Iterator[None]:
        """The reader's errors as MovementErrors that name the line."""
        try:
            yield
        except csv.Error as exc:
            raise MovementError(f"{self.label} line {self.count}: {exc}") from None
        except UnicodeDecodeError:
            # the reader counts a line only once it has it
            raise MovementError(f"{self.label} line {self.count + 1}: not valid UTF-8") from None

    def header(self) -> list[str] | None:
        """The first record that is not a blank line, or None when there is none."""
        with self.errors():
            for names in self.reader:
                if names:
                    return names
        return None

    def skip_to(self, line: int) -> None:
        """Pass over lines, unparsed, until ``line`` lines have been read (or the file ends); the kept
        copy starts after them."""
        for data in islice(self._lines, max(0, line - self.count)):
            self.skipped += 1
            try:
                data.decode()
            except UnicodeDecodeError:
                raise MovementError(f"{self.label} line {self.count}: not valid UTF-8") from None
        self.kept()

    def kept(self) -> list[str]:
        """The lines the reader has had since the last call (none without ``keep_raw``)."""
        if self._kept is None:
            return []
        count, self._kept_to = self.reader.line_num - self._kept_to, self.reader.line_num
        return list(islice(self._kept, count))


@dataclass
class CsvChunk:
    """CSV records read together, and the lines they came from."""

    start: int  # the count of lines read before them
    records: list[list[str]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # the count of lines read at the end of each record
    exhausted: bool = False  # the file has no more records
    failure: MovementError | None = None  # what stopped the reading early, raised after earlier bad values
    raw: list[str] = field(default_factory=list)  # the lines, when kept
    firsts: list[int] | None = None  # the line each record begins on, once blank lines are dropped
    quoted: dict[int, list[bool]] = field(default_factory=dict)  # for records that were looked at

    def first(self, k: int) -> int:
        """The line record ``k`` begins on."""
        if self.firsts is not None:
            return self.firsts[k]
        return (self.ends[k - 1] if k else self.start) + 1

    def text(self, k: int) -> str:
        """The raw text of record ``k``."""
        return "".join(self.raw[self.first(k) - self.start - 1 : self.ends[k] - self.start])

    def tidy(self, width: int, label: str) -> None:
        """Drop blank lines, and keep only the records before the first that has not ``width`` fields."""
        firsts = [self.first(k) for k in range(len(self.records))]
        kept: list[int] = []
        for k, fields in enumerate(self.records):
            if len(fields) == width:
                kept.append(k)
            elif fields:
                found = len(fields)
                self.failure = MovementError(
                    f"{label} line {firsts[k]}: expected {width} fields, found {found}"
                )
                break
        self.records = [self.records[k] for k in kept]
        self.ends = [self.ends[k] for k in kept]
        self.firsts = [firsts[k] for k in kept]


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
            return open_file(path)
        except OSError as exc:
            raise MovementError(f"{self.where}: cannot read {path}: {exc.strerror}") from None

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


class CsvSource(FileSource):
    kind = "csv"
    default_pattern = "*.csv"

    def open(self) -> None:
        super().open()
        delimiter = self.options.get("delimiter") or ","
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
            raise MovementError(f"{self.where}: option 'delimiter' must be one character other than a quote")
        header = self.options.get("header")
        header = True if header is None else header
        if not isinstance(header, bool):
            raise MovementError(f"{self.where}: option 'header' must be true or false")
        null = self.options.get("null")
        if not isinstance(null, str | None):
            raise MovementError(f"{self.where}: option 'null' must be a string")
        if not header and self.columns is None:
            raise MovementError(f"{self.where}: a CSV without a header needs the 'columns' option")
        self.delimiter, self.header, self.null = delimiter, header, null or ""
        self._unquoted = re.compile(f"[^{re.escape(delimiter)}\r\n]*")

    def infer(self, path: Path) -> tuple[Column, ...] | None:
        label = f"{self.where}: {path.name}"
        with self._open(path) as handle:
            names = CsvLines(handle, label, self.delimiter, keep_raw=False).header()
        if names is None:
            return None
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MovementError(f"{label}: the header repeats {', '.join(map(repr, duplicates))}")
        return tuple(Column(n, T.TEXT) for n in names)

    def quoted_fields(self, raw: str) -> list[bool]:
        """Which fields of a record's raw text are quoted (the csv module does not say); fields past
        the end of the list are not."""
        flags: list[bool] = []
        if '"' not in raw:
            return flags
        pos = 0
        while True:
            quoted = raw.startswith('"', pos)
            flags.append(quoted)
            if quoted:
                pos = _end(_QUOTED, raw, pos)
            pos = _end(self._unquoted, raw, pos)
            if not raw.startswith(self.delimiter, pos):
                return flags
            pos += 1

    def stored_columns(self, schema: Schema, reads_text: frozenset[LogicalType]) -> frozenset[str]:
        return frozenset(c.name for c in schema.columns if c.type in _PLAIN.keys() & reads_text)

    def chunks(
        self, path: Path, schema: Schema, skip: int, size: int, stored: frozenset[str]
    ) -> Iterator[tuple[int, list[Row]]]:
        label = f"{self.where}: {path.name}"
        columns = schema.columns
        with self._open(path) as handle:
            keep_raw = any(c.type in _LITERAL for c in columns)
            lines = CsvLines(handle, label, self.delimiter, keep_raw=keep_raw)
            width, indexes = len(columns), list(range(len(columns)))
            if self.header:
                names = lines.header()
                if names is None:
                    return
                missing = [c.name for c in columns if c.name not in names]
                if missing:
                    raise MovementError(
                        f"{label}: the header has no column {', '.join(map(repr, missing))}"
                        f" (it has {', '.join(names)})"
                    )
                width, indexes = len(names), [names.index(c.name) for c in columns]
            lines.skip_to(skip)
            plan = [
                (i, c, plain_parser(c.type) if c.name in stored else column_parser(c.type))
                for i, c in zip(indexes, columns, strict=True)
            ]
            rows: list[Row] = []
            last = lines.count
            while True:
                # a few records at a time, converted while their fields are still in the CPU's caches
                wanted = min(_RECORDS, size - len(rows))
                chunk = self._read(lines, wanted, width)
                rows += self._rows(label, plan, chunk)
                if chunk.failure is not None:
                    raise chunk.failure
                if chunk.records:
                    last = chunk.ends[-1]
                if chunk.exhausted:
                    yield last, rows
                    return
                if len(rows) == size:
                    yield last, rows
                    rows = []

    def _read(self, lines: CsvLines, wanted: int, width: int) -> CsvChunk:
        """The next ``wanted`` records, blank lines counted among them but dropped; a reading error
        ends them early, as the chunk's ``failure``."""
        chunk = CsvChunk(start=lines.count)
        records = chunk.records
        try:
            with lines.errors():
                records.extend(islice(lines.reader, wanted))  # keeps the records read before an error
        except MovementError as exc:
            chunk.failure = exc
        chunk.ends = _ends(chunk.start, records, None if chunk.failure else lines.count)
        chunk.exhausted = len(records) < wanted
        chunk.raw = lines.kept()
        if records and set(map(len, records)) != {width}:
            chunk.tidy(width, lines.label)
        return chunk

    def _rows(
        self, label: str, plan: list[tuple[int, Column, ColumnParser | None]], chunk: CsvChunk
    ) -> list[Row]:
        """A chunk's records → rows, converted a column at a time."""
        if not chunk.records:
            return []
        fields = list(zip(*chunk.records, strict=True))
        values: list[Sequence[Any]] = []
        try:
            for index, column, parse in plan:
                texts = fields[index]
                nulls = self.null in texts
                settled = self._nulls(chunk, index, column, texts) if nulls else texts
                values.append(settled if parse is None else _column(parse, settled, nulls))
        except _CONVERSION_ERRORS:
            # go record by record for the first value that does not fit, to name its line and column
            for k, record in enumerate(chunk.records):
                for index, column, _ in plan:
                    text = record[index]
                    if text != self.null or not self._null(chunk, k, index, column):
                        csv_value(label, chunk.first(k), column, text)
            raise
        return list(zip(*values, strict=True))

    def _nulls(self, chunk: CsvChunk, index: int, column: Column, texts: Sequence[str]) -> list[str | None]:
        """A column's fields with the NULL ones as None."""
        null = self.null
        if column.type not in _LITERAL:
            return [None if text == null else text for text in texts]
        settled: list[str | None] = list(texts)
        for k in _positions(texts, null):
            if self._null(chunk, k, index, column):
                settled[k] = None
        return settled

    def _null(self, chunk: CsvChunk, k: int, index: int, column: Column) -> bool:
        """Whether field ``index`` of record ``k``, which equals ``null``, is NULL: it is unless quoted in
        a text or bytes column."""
        if column.type not in _LITERAL:
            return True
        if k not in chunk.quoted:
            chunk.quoted[k] = self.quoted_fields(chunk.text(k))
        quoted = chunk.quoted[k]
        return index >= len(quoted) or not quoted[index]


class JsonlSource(FileSource):
    kind = "jsonl"
    default_pattern = "*.jsonl"

    def _objects(self, path: Path, skip: int) -> Generator[tuple[int, dict[str, Any]], None, None]:
        label = f"{self.where}: {path.name}"
        # decimals stay exact; columns that want floats convert
        decoder = json.JSONDecoder(parse_float=Decimal)
        with self._open(path) as handle:
            lines = Lines(handle, label)
            lines.skip_to(skip)
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = decoder.decode(line)
                except ValueError as exc:
                    raise MovementError(f"{label} line {lines.count}: not valid JSON: {exc}") from None
                if not isinstance(record, dict):
                    found = type(record).__name__
                    raise MovementError(f"{label} line {lines.count}: expected a JSON object, found {found}")
                yield lines.count, record

    def infer(self, path: Path) -> tuple[Column, ...] | None:
        objects = self._objects(path, 0)
        try:
            first = next(objects, None)
        finally:
            objects.close()
        return None if first is None else tuple(Column(str(k), json_type(v)) for k, v in first[1].items())

    def chunks(
        self, path: Path, schema: Schema, skip: int, size: int, stored: frozenset[str]
    ) -> Iterator[tuple[int, list[Row]]]:
        rows: list[Row] = []
        line = skip
        for line, row in self.records(path, schema, skip):
            rows.append(row)
            if len(rows) == size:
                yield line, rows
                rows = []
        yield line, rows

    def records(self, path: Path, schema: Schema, skip: int) -> Iterator[tuple[int, Row]]:
        label = f"{self.where}: {path.name}"
        plan = [(column, json_parser(column.type)) for column in schema.columns]
        for line, record in self._objects(path, skip):
            values: list[Any] = []
            for column, parse in plan:
                value = record.get(column.name)
                try:
                    values.append(None if value is None else parse(value))
                except _CONVERSION_ERRORS as exc:
                    shown = json.dumps(plain_json(value), ensure_ascii=False)
                    raise bad_value(label, line, column, shown, exc) from None
            yield line, tuple(values)
