"""Types, values and names for the MySQL/MariaDB connector (``mysql.py``).

Every session talks utf8mb4 with ``time_zone = '+00:00'``. Types, read from
``information_schema`` for tables and from the result metadata for queries:

| MySQL / MariaDB                                            | logical                  |
|------------------------------------------------------------|--------------------------|
| TINYINT(1), BOOL, BIT(1)                                   | boolean                  |
| TINYINT, SMALLINT, MEDIUMINT, INT, YEAR                    | integer                  |
| INT UNSIGNED, BIGINT, BIT(2..63)                           | bigint                   |
| BIGINT UNSIGNED, BIT(64)                                   | decimal(20,0)            |
| FLOAT, DOUBLE                                              | float                    |
| DECIMAL(p,s)                                               | decimal                  |
| CHAR, VARCHAR, *TEXT, ENUM, SET, UUID, INET4, INET6        | text                     |
| JSON (MariaDB's: a text column with a json_valid check)    | json                     |
| BINARY, VARBINARY, *BLOB                                   | bytes                    |
| DATE                                                       | date                     |
| DATETIME                                                   | timestamp                |
| TIMESTAMP, and DATETIME commented ``mycelial:timestamptz`` | timestamptz (aware, UTC) |
| TIME, GEOMETRY and the spatial types, anything else        | unsupported              |

Zero dates (``0000-00-00``), which are not dates, are read as NULL. A query source sees
MariaDB's JSON as text: the json_valid check lives on the table, not in the result metadata.

The sink creates InnoDB tables in utf8mb4 with a binary, no-pad collation (keys compare
byte for byte, as in every other destination): INT, BIGINT, DOUBLE, DECIMAL(p,s) (DECIMAL(65,30)
when the source gives no precision: MySQL's widest, so nothing is rounded that fits), LONGTEXT
(VARCHAR for key columns, which cannot be TEXT), TINYINT(1), DATE, DATETIME(6), LONGBLOB
(VARBINARY for keys) and JSON. timestamptz is stored as DATETIME(6) holding UTC, commented
``mycelial:timestamptz`` so that it reads back as timestamptz: TIMESTAMP only holds 1970-2038, and
DATETIME holds years 1 to 9999 without the session time zone touching the value.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC
from decimal import Decimal
from typing import Any

from pymysql.constants import FIELD_TYPE, FLAG
from pymysql.converters import conversions, convert_date, convert_datetime

from workers.movement.errors import MovementError
from workers.movement.types import Column, LogicalType, Row, Schema, UnsupportedTypeError

T = LogicalType

TZ_COMMENT = "mycelial:timestamptz"
MAX_IDENTIFIER = 64
MAX_PRECISION, MAX_SCALE = 65, 30
KEY_BYTES = 3000  # InnoDB indexes at most 3072 bytes; the rest is left for fixed-width key columns


def quote(identifier: str) -> str:
    """A backtick-quoted identifier, for SQL that goes through PyMySQL's ``%`` formatting.

    Every statement here is executed with a parameter tuple (possibly empty), so ``%`` is doubled.
    """
    return "`" + identifier.replace("`", "``").replace("%", "%%") + "`"


def split_table(table: str) -> tuple[str | None, str]:
    """``db.table`` or ``table`` (in the connection's database)."""
    database, dot, name = table.partition(".")
    return (database, name) if dot else (None, table)


def quote_table(table: str) -> str:
    database, name = split_table(table)
    return f"{quote(database)}.{quote(name)}" if database else quote(name)


def aux_table(prefix: str, table: str) -> str:
    """``prefix + table`` in the table's database, shortened with a hash to MySQL's 64 characters."""
    database, name = split_table(table)
    full = prefix + name
    if len(full) > MAX_IDENTIFIER:
        digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
        full = f"{prefix}{name[: MAX_IDENTIFIER - len(prefix) - 9]}_{digest}"
    return f"{database}.{full}" if database else full


# --- types ---------------------------------------------------------------------------------

_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}
_TEXT |= {"uuid", "inet4", "inet6"}  # MariaDB types that read as their text form
_BYTES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}


def table_column(
    name: str,
    data_type: str,
    column_type: str,
    precision: int | None,
    scale: int | None,
    comment: str,
    is_json: bool,
    where: str,
) -> Column:
    """Map an information_schema.COLUMNS row to a logical column."""
    kind, full = data_type.lower(), column_type.lower()
    unsigned = "unsigned" in full
    if kind == "tinyint" and full == "tinyint(1)":
        return Column(name, T.BOOLEAN)
    if kind in {"tinyint", "smallint", "mediumint", "year"}:
        return Column(name, T.INTEGER)
    if kind in {"int", "integer"}:
        return Column(name, T.BIGINT if unsigned else T.INTEGER)
    if kind == "bigint":
        return Column(name, T.DECIMAL, precision=20, scale=0) if unsigned else Column(name, T.BIGINT)
    if kind == "bit":
        width = int(re.sub(r"\D", "", full) or 1)
        if width == 1:
            return Column(name, T.BOOLEAN)
        return Column(name, T.BIGINT) if width < 64 else Column(name, T.DECIMAL, precision=20, scale=0)
    if kind in {"float", "double", "real", "double precision"}:
        return Column(name, T.FLOAT)
    if kind in {"decimal", "numeric", "dec", "fixed"}:
        return Column(name, T.DECIMAL, precision=precision, scale=scale)
    if kind == "json" or (kind in _TEXT and is_json):
        return Column(name, T.JSON)
    if kind in _TEXT:
        return Column(name, T.TEXT)
    if kind in _BYTES:
        return Column(name, T.BYTES)
    if kind == "date":
        return Column(name, T.DATE)
    if kind == "datetime":
        return Column(name, T.TIMESTAMPTZ if comment.strip() == TZ_COMMENT else T.TIMESTAMP)
    if kind == "timestamp":
        return Column(name, T.TIMESTAMPTZ)
    raise UnsupportedTypeError(name, column_type, where)


_FIELD_NAMES = {
    value: name.lower()
    for name, value in vars(FIELD_TYPE).items()
    if name.isupper() and isinstance(value, int)
}
_STRING_FIELDS = {
    FIELD_TYPE.STRING,
    FIELD_TYPE.VAR_STRING,
    FIELD_TYPE.VARCHAR,
    FIELD_TYPE.TINY_BLOB,
    FIELD_TYPE.MEDIUM_BLOB,
    FIELD_TYPE.LONG_BLOB,
    FIELD_TYPE.BLOB,
    FIELD_TYPE.ENUM,
    FIELD_TYPE.SET,
}
_BINARY_CHARSET = 63


def result_column(
    name: str, code: int, length: int, scale: int, flags: int, charsetnr: int, where: str
) -> Column:
    """Map a result-set column (a query source's) to a logical column."""
    unsigned = bool(flags & FLAG.UNSIGNED)
    if code == FIELD_TYPE.TINY:
        return Column(name, T.BOOLEAN if length == 1 else T.INTEGER)
    if code in {FIELD_TYPE.SHORT, FIELD_TYPE.INT24, FIELD_TYPE.YEAR}:
        return Column(name, T.INTEGER)
    if code == FIELD_TYPE.LONG:
        return Column(name, T.BIGINT if unsigned else T.INTEGER)
    if code == FIELD_TYPE.LONGLONG:
        return Column(name, T.DECIMAL, precision=20, scale=0) if unsigned else Column(name, T.BIGINT)
    if code == FIELD_TYPE.BIT:
        if length == 1:
            return Column(name, T.BOOLEAN)
        return Column(name, T.BIGINT) if length < 64 else Column(name, T.DECIMAL, precision=20, scale=0)
    if code in {FIELD_TYPE.FLOAT, FIELD_TYPE.DOUBLE}:
        return Column(name, T.FLOAT)
    if code in {FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL}:
        # the display length counts the point (when there is a scale) and the sign (when signed)
        precision = length - (1 if scale else 0) - (0 if unsigned else 1)
        return Column(name, T.DECIMAL, precision=min(max(precision, 1), MAX_PRECISION), scale=scale)
    if code == FIELD_TYPE.JSON:
        return Column(name, T.JSON)
    if code in _STRING_FIELDS:
        binary = charsetnr == _BINARY_CHARSET and not flags & (FLAG.ENUM | FLAG.SET)
        return Column(name, T.BYTES if binary else T.TEXT)
    if code in {FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE}:
        return Column(name, T.DATE)
    if code == FIELD_TYPE.DATETIME:
        return Column(name, T.TIMESTAMP)
    if code == FIELD_TYPE.TIMESTAMP:
        return Column(name, T.TIMESTAMPTZ)
    if code == FIELD_TYPE.NULL:
        return Column(name, T.TEXT)
    raise UnsupportedTypeError(name, _FIELD_NAMES.get(code, f"type code {code}"), where)


def check_column(column: Column, where: str) -> None:
    if column.type is T.DECIMAL and column.precision is not None:
        scale = column.scale or 0
        if column.precision > MAX_PRECISION or scale > MAX_SCALE or scale > column.precision:
            raise MovementError(
                f"{where}: column {column.name!r} is decimal({column.precision},{scale}), and MySQL's"
                f" DECIMAL holds at most {MAX_PRECISION} digits, {MAX_SCALE} after the point"
            )


def declared_type(column: Column, *, collation: str = "utf8mb4_bin", key_bytes: int | None = None) -> str:
    """The column type the sink declares; ``key_bytes`` is set for key columns (VARCHAR/VARBINARY)."""
    text = f"CHARACTER SET utf8mb4 COLLATE {collation}"
    if column.type is T.DECIMAL:
        if column.precision is None:
            return f"DECIMAL({MAX_PRECISION},{MAX_SCALE})"
        return f"DECIMAL({column.precision},{column.scale or 0})"
    if column.type is T.TEXT:
        return f"VARCHAR({key_bytes // 4}) {text}" if key_bytes else f"LONGTEXT {text}"
    if column.type is T.BYTES:
        return f"VARBINARY({key_bytes})" if key_bytes else "LONGBLOB"
    if column.type is T.TIMESTAMPTZ:
        return f"DATETIME(6) COMMENT '{TZ_COMMENT}'"
    return {
        T.INTEGER: "INT",
        T.BIGINT: "BIGINT",
        T.FLOAT: "DOUBLE",
        T.BOOLEAN: "TINYINT(1)",
        T.DATE: "DATE",
        T.TIMESTAMP: "DATETIME(6)",
        T.JSON: "JSON",
    }[column.type]


def key_widths(schema: Schema, keys: tuple[str, ...], where: str) -> dict[str, int]:
    """Bytes for each variable-width key column, sharing InnoDB's index limit between them."""
    variable = [k for k in keys if schema.column(k).type in (T.TEXT, T.BYTES)]
    for key in keys:
        if schema.column(key).type is T.JSON:
            raise MovementError(f"{where}: key column {key!r} is json, which MySQL cannot index")
    return {k: KEY_BYTES // len(variable) for k in variable}


def _decode_or_null(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def decode(text: str) -> Any:
        value = parse(text)
        return None if isinstance(value, str) else value  # a zero or partial date: not a date

    return decode


#: PyMySQL's conversions, with BIT read as an integer and zero dates as NULL
DECODERS: dict[Any, Any] = {
    **conversions,
    FIELD_TYPE.BIT: lambda raw: int.from_bytes(raw, "big"),
    FIELD_TYPE.DATE: _decode_or_null(convert_date),
    FIELD_TYPE.DATETIME: _decode_or_null(convert_datetime),
    FIELD_TYPE.TIMESTAMP: _decode_or_null(convert_datetime),
}


def from_mysql(kind: LogicalType) -> Callable[[Any], Any] | None:
    if kind is T.BOOLEAN:
        return bool
    if kind is T.DECIMAL:
        return lambda v: v if isinstance(v, Decimal) else Decimal(v)
    if kind is T.TIMESTAMPTZ:
        return lambda v: v.replace(tzinfo=UTC)  # the session's time zone is UTC
    if kind is T.JSON:
        return lambda v: json.loads(v) if isinstance(v, str | bytes) else v
    return None  # PyMySQL's own types already: int, float, str, bytes, date, datetime


def to_mysql(kind: LogicalType) -> Callable[[Any], Any] | None:
    if kind is T.TIMESTAMPTZ:
        return lambda v: v.astimezone(UTC).replace(tzinfo=None)
    if kind is T.JSON:
        return lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False)
    if kind is T.BYTES:
        return lambda v: v if isinstance(v, bytes) else bytes(v)
    if kind is T.BOOLEAN:
        return int
    return None


def converter(
    schema: Schema, make: Callable[[LogicalType], Callable[[Any], Any] | None]
) -> Callable[[Row], Row]:
    """One function that converts a whole row; columns that need nothing cost nothing."""
    width = len(schema.columns)
    funcs = [(i, f) for i, c in enumerate(schema.columns) if (f := make(c.type)) is not None]
    if not funcs:
        return lambda row: tuple(row)

    def convert(row: Row) -> Row:
        if len(row) != width:
            raise ValueError(f"a row of {len(row)} values for {width} columns")
        values = list(row)
        for i, f in funcs:
            if values[i] is not None:
                values[i] = f(values[i])
        return tuple(values)

    return convert
