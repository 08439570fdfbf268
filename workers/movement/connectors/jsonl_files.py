"""JSON-lines files as sources; the options, values and positions both kinds share are in ``files``.

Values: JSON-lines numbers are read exactly, so decimals keep every digit, and numbers and
booleans may also come as strings; a missing key is NULL and keys outside the schema are ignored; a
JSON string in a ``json`` column stays a string.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from workers.movement.connectors.files import (
    _CONVERSION_ERRORS,
    _RANGES,
    BadValue,
    FileSource,
    Lines,
    _boolean,
    _decimal,
    _integer,
    bad_value,
    text_parser,
)
from workers.movement.errors import MovementError
from workers.movement.types import Column, LogicalType, Row, Schema

T = LogicalType


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
