"""CSV files as sources; the options, values and positions both kinds share are in ``files``.

CSV options: ``delimiter`` (default ``,``); ``header`` (default true: columns are found in the
header by name; without a header, ``columns`` is required and fields are taken in its order);
``null`` (default the empty string). A field equal to ``null`` is NULL, except that in ``text`` and
``bytes`` columns a quoted field is always a value, as in PostgreSQL's ``COPY ... CSV``: ``a,,b``
holds NULL, ``a,"",b`` the empty string. Blank lines are skipped. Files are UTF-8 (a BOM is
allowed), with ``\\n`` or ``\\r\\n`` line ends.

Values: as in ``files``; ``json`` fields hold JSON text.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import chain, islice, tee
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO, cast

from workers.movement import plain
from workers.movement.connectors.files import (
    _BOOLEANS,
    _CONVERSION_ERRORS,
    _RANGES,
    BadValue,
    FileSource,
    _in_utc,
    bad_value,
    text_parser,
)
from workers.movement.errors import MovementError
from workers.movement.types import Column, LogicalType, Row, Schema

T = LogicalType

# a quoted field up to its closing quote, where "" is a quote inside it
_QUOTED = re.compile(r'"[^"]*(?:""[^"]*)*"?')
_TZINFO = attrgetter("tzinfo")
_RECORDS = 500  # CSV records read, then converted, at a time
_LITERAL = (T.TEXT, T.BYTES)  # the types where a quoted field equal to the null marker is a value


# --- values --------------------------------------------------------------------------------


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
_PLAIN: dict[LogicalType, plain.Check] = {
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
    parse, is_plain = column_parser(kind), _PLAIN[kind]
    assert parse is not None
    return lambda texts: texts if is_plain(texts) else parse(texts)


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


def _end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    match = pattern.match(text, pos)
    return match.end() if match else pos


# --- reading -------------------------------------------------------------------------------


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
