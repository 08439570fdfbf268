"""Logical column types shared by every connector, and the Python value each one travels as.

| type        | Python value                        |
|-------------|-------------------------------------|
| integer     | int (32-bit range)                  |
| bigint      | int (64-bit range)                  |
| float       | float                               |
| decimal     | decimal.Decimal (exact)             |
| text        | str                                 |
| boolean     | bool                                |
| date        | datetime.date                       |
| timestamp   | datetime.datetime, naive            |
| timestamptz | datetime.datetime, aware, in UTC    |
| bytes       | bytes                               |
| json        | dict / list / str / int / float / bool (parsed JSON) |

``None`` is SQL NULL in every type.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class LogicalType(enum.StrEnum):
    INTEGER = "integer"
    BIGINT = "bigint"
    FLOAT = "float"
    DECIMAL = "decimal"
    TEXT = "text"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    BYTES = "bytes"
    JSON = "json"


class UnsupportedTypeError(ValueError):
    """A column whose type cannot be carried; the message names the column and the type."""

    def __init__(self, column: str, native_type: str, where: str) -> None:
        super().__init__(f"{where}: column {column!r} has type {native_type!r}, which cannot be carried")
        self.column, self.native_type = column, native_type


@dataclass(frozen=True)
class Column:
    name: str
    type: LogicalType
    nullable: bool = True
    precision: int | None = None  # decimal only
    scale: int | None = None  # decimal only


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def index(self, name: str) -> int:
        return self.names.index(name)


Row = tuple[Any, ...]
Batch = Sequence[Row]
