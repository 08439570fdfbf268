"""MySQL and MariaDB as a source and a sink, through PyMySQL (pure Python).

Options are the keys the control plane validates for ``kind: mysql``: ``host`` (default
127.0.0.1), ``port`` (3306), ``user`` (root), ``password`` (a ``${env:NAME}`` or
``${file:/path}`` reference, resolved at ``open()``; references work in the other keys too),
and ``database`` (required). There is no URL form: one scheme, the same keys the configuration
file takes. Connecting gives up after ``CONNECT_TIMEOUT`` seconds.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import replace as replaced
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeAlias

import pymysql
import pymysql.cursors
from pymysql.constants import FIELD_TYPE, FLAG
from pymysql.converters import conversions, convert_date, convert_datetime

from workers.movement.errors import MovementError, RetryableError
from workers.movement.interface import (
    STATE_TABLE,
    PipelineState,
    ReadSpec,
    Sink,
    Source,
    SourceBatch,
    WriteSpec,
    dump_state,
    held_elsewhere,
    lease_name,
    load_state_json,
)
from workers.movement.positions import tracked
from workers.movement.sqlbuild import ordered_read
from workers.movement.types import Column, LogicalType, Row, Schema, UnsupportedTypeError
from workers.secrets import SecretError, resolve

T = LogicalType
Connection: TypeAlias = "pymysql.connections.Connection[pymysql.cursors.Cursor]"

TZ_COMMENT = "mycelial:timestamptz"
STAGE_PREFIX = "_mycelial_stage_"
OLD_PREFIX = "_mycelial_old_"
MAX_IDENTIFIER = 64
MAX_PRECISION, MAX_SCALE = 65, 30
CONNECT_TIMEOUT = 10.0
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


# --- connections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    def scrub(self, text: str) -> str:
        """A message with the password, should a server or driver ever echo it, blanked out."""
        return text.replace(self.password, "***") if self.password else text


def settings(options: dict[str, Any], where: str) -> Settings:
    try:
        values = {
            key: resolve(str(options.get(key) if options.get(key) is not None else default))
            for key, default in (
                ("host", "127.0.0.1"),
                ("port", 3306),
                ("user", "root"),
                ("password", ""),
                ("database", ""),
            )
        }
    except SecretError as exc:
        raise MovementError(f"{where}: {exc}") from None
    if not values["database"]:
        raise MovementError(f"{where}: option 'database' is required")
    try:
        port = int(values["port"])
    except ValueError:
        raise MovementError(f"{where}: option 'port' must be a number, not {values['port']!r}") from None
    return Settings(values["host"], port, values["user"], values["password"], values["database"])


# Errors after which the same attempt later can succeed: the server is away, busy, or chose this
# transaction as a deadlock victim. Everything else (bad SQL, a missing table, a denied privilege,
# a value that does not fit) needs a person.
_RETRYABLE_CODES = {1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055}
# Connection failures that trying again will not fix: wrong credentials or database.
_FATAL_CONNECT_CODES = {1044, 1045, 1049, 1251, 1698, 2059}


def _code(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = exc.args
    return args[0] if args and isinstance(args[0], int) else None


def _reason(exc: BaseException) -> str:
    args: tuple[Any, ...] = exc.args
    text = (str(args[1]) if len(args) >= 2 else str(exc)) or "the connection was lost"
    # "Can't connect to MySQL server on 'h' ([Errno 111] Connection refused)" -> the part in brackets
    match = re.match(r"^Can't connect to MySQL server on .*? \((.*)\)$", text)
    return match.group(1) if match else text


def connect(config: Settings, where: str, *, conv: dict[Any, Any] | None = None) -> Connection:
    try:
        conn: Connection = pymysql.connect(
            host=config.host,
            port=config.port,
            user=config.user,
            password=config.password,
            database=config.database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            conv=conv,
        )
    except pymysql.MySQLError as exc:
        message = config.scrub(
            f"{where}: cannot connect to MySQL at {config.host}:{config.port}: {_reason(exc)}"
        )
        if _code(exc) in _FATAL_CONNECT_CODES:
            raise MovementError(message) from None
        raise RetryableError(message) from None
    return conn


def failure(where: str, exc: BaseException, config: Settings) -> MovementError:
    """The MovementError (or RetryableError) for a driver error, naming the connector."""
    code = _code(exc)
    message = config.scrub(f"{where}: {_reason(exc)}" + (f" (MySQL error {code})" if code else ""))
    if code in _RETRYABLE_CODES or isinstance(exc, pymysql.err.InterfaceError):
        return RetryableError(message)
    return MovementError(message)


def execute(cursor: pymysql.cursors.Cursor, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> None:
    cursor.execute(sql, tuple(params))


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


def _to_param(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


# --- source --------------------------------------------------------------------------------


class MysqlSource(Source):
    kind = "mysql"

    @property
    def where(self) -> str:
        return f"source {self.name}"

    def open(self) -> None:
        self.config = settings(self.options, self.where)
        self.conn: Connection | None = None
        self._connection()

    def _connection(self) -> Connection:
        conn: Connection | None = self.__dict__.get("conn")
        if conn is None or not conn.open:
            self.conn = conn = connect(self.config, self.where, conv=DECODERS)
            try:
                with conn.cursor() as cursor:
                    execute(cursor, "SET time_zone = '+00:00'")
                    # A streamed read waits while the destination writes each batch; give the server
                    # an hour (not a minute) before it gives up on a reader that is slow to read.
                    execute(cursor, "SET SESSION net_write_timeout = 3600")
            except pymysql.MySQLError as exc:
                raise failure(self.where, exc, self.config) from None
        return conn

    def close(self) -> None:
        conn = self.__dict__.pop("conn", None)
        if conn is not None and conn.open:
            conn.close()

    def schema(self, spec: ReadSpec) -> Schema:
        try:
            with self._connection().cursor() as cursor:
                if spec.table is not None:
                    return self._table_schema(cursor, spec.table)
                assert spec.query is not None
                query = spec.query.strip().rstrip(";").replace("%", "%%")
                execute(cursor, f"SELECT * FROM ({query}) AS _mycelial_q LIMIT 0")
                # the result's field packets carry what ``description`` leaves out: flags, charset
                fields = getattr(getattr(cursor, "_result", None), "fields", None) or []
                columns = tuple(
                    result_column(f.name, f.type_code, f.length, f.scale, f.flags, f.charsetnr, self.where)
                    for f in fields
                )
                return Schema(columns)
        except pymysql.MySQLError as exc:
            raise failure(self.where, exc, self.config) from None

    def _table_schema(self, cursor: pymysql.cursors.Cursor, table: str) -> Schema:
        database, name = split_table(table)
        scope = "TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s"
        execute(
            cursor,
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, COLUMN_COMMENT"
            f" FROM information_schema.COLUMNS WHERE {scope} ORDER BY ORDINAL_POSITION",
            (database, name),
        )
        info = cursor.fetchall()
        if not info:
            raise MovementError(f"{self.where}: no such table (or no privilege to read it): {table}")
        json_columns = self._json_checked(cursor, database, name)
        columns = tuple(
            table_column(r[0], r[1], r[2], r[3], r[4], r[5] or "", r[0].lower() in json_columns, self.where)
            for r in info
        )
        execute(
            cursor,
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS"
            f" WHERE {scope} AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            (database, name),
        )
        return Schema(columns, primary_key=tuple(r[0] for r in cursor.fetchall()))

    @staticmethod
    def _json_checked(cursor: pymysql.cursors.Cursor, database: str | None, name: str) -> set[str]:
        """Lower-cased names of the text columns that a ``json_valid(col)`` check keeps to JSON
        (MariaDB's JSON); MySQL has a real JSON type and no TABLE_NAME in this view."""
        try:
            execute(
                cursor,
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
                (database, name),
            )
        except pymysql.MySQLError:
            return set()
        found: set[str] = set()
        for (clause,) in cursor.fetchall():
            match = re.fullmatch(r"\s*json_valid\(\s*`((?:[^`]|``)+)`\s*\)\s*", str(clause), re.IGNORECASE)
            if match:
                found.add(match.group(1).replace("``", "`").lower())
        return found

    def batches(self, spec: ReadSpec, schema: Schema) -> Iterator[SourceBatch]:
        if spec.query is not None:
            spec = replaced(spec, query=spec.query.replace("%", "%%"))
        sql, params, tracker = ordered_read(spec, schema, quote=quote, param="%s")
        convert = converter(schema, from_mysql)
        conn = self._connection()
        # Unbuffered: rows come off the socket as they are fetched, so memory holds one batch.
        cursor = conn.cursor(pymysql.cursors.SSCursor)
        try:
            execute(cursor, sql, [_to_param(p) for p in params])
        except pymysql.MySQLError as exc:
            raise failure(self.where, exc, self.config) from None

        def raw() -> Iterator[list[Row]]:
            finished = False
            try:
                while True:
                    try:
                        rows = cursor.fetchmany(spec.batch_size)
                    except pymysql.MySQLError as exc:
                        raise failure(self.where, exc, self.config) from None
                    if not rows:
                        finished = True
                        return
                    yield [convert(r) for r in rows]
            finally:
                if finished:
                    cursor.close()
                elif conn.open:
                    # Closing an unbuffered cursor early would read the rest of the result off the
                    # socket; closing the connection does not (the next call reconnects). PyMySQL's
                    # result would still try to, when collected, from the closed socket: tell it not to.
                    result = getattr(cursor, "_result", None)
                    if result is not None:
                        result.unbuffered_active = False
                    conn.close()

        yield from tracked(raw(), tracker)


# --- sink ----------------------------------------------------------------------------------


class MysqlSink(Sink):
    """Writes each batch and the pipeline state in one InnoDB transaction.

    ``replace`` loads a staging table and swaps it in with one ``RENAME TABLE`` in ``finish``.
    MySQL commits around every DDL statement, so the swap and the state cannot share a
    transaction. The state is therefore committed first, already complete, with the swap still
    to do recorded beside it (``pending_swap``); then the tables are renamed; then the record is
    cleared. A crash in between leaves a record that ``load_state`` and ``prepare`` settle before
    anything else: RENAME of both tables is atomic, so a staging table that still exists means the
    swap did not happen (it is done then; the staging table holds the complete, committed load),
    and one that is gone means it did. So the committed state never claims a load that is not, or
    will not be, in the target table, and a crash never leaves the target half-replaced.
    Two pipelines replacing the same table at the same time are not supported (they share the
    staging table), as for every destination; two runs of one pipeline never write at once (lease).
    """

    kind = "mysql"

    @property
    def where(self) -> str:
        return f"destination {self.name}"

    def open(self) -> None:
        self.config = settings(self.options, self.where)
        self.conn = connect(self.config, self.where)
        try:
            with self.conn.cursor() as cursor:
                execute(cursor, "SET time_zone = '+00:00'")
                execute(cursor, "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'")
                self.collation = self._binary_collation(cursor)
                execute(
                    cursor,
                    f"CREATE TABLE IF NOT EXISTS {quote(STATE_TABLE)} ("
                    " pipeline VARCHAR(255) NOT NULL PRIMARY KEY, state LONGTEXT NOT NULL,"
                    " updated_at DATETIME(6), pending_swap TEXT NULL)"
                    f" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={self.collation}",
                )
        except pymysql.MySQLError as exc:
            self.close()
            raise failure(self.where, exc, self.config) from None

    @staticmethod
    def _binary_collation(cursor: pymysql.cursors.Cursor) -> str:
        """Binary and no-pad where the server has one (MySQL 8, MariaDB 10.2+): 'a' and 'a ' differ."""
        execute(
            cursor,
            "SELECT COLLATION_NAME FROM information_schema.COLLATIONS"
            " WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')",
        )
        names = {r[0] for r in cursor.fetchall()}
        return next((n for n in ("utf8mb4_0900_bin", "utf8mb4_nopad_bin") if n in names), "utf8mb4_bin")

    def close(self) -> None:
        conn = self.__dict__.pop("conn", None)
        if conn is not None and conn.open:
            conn.close()

    def lease(self, pipeline: str) -> None:
        """A named lock, released when the connection closes (or its daemon dies)."""
        try:
            with self.conn.cursor() as cursor:
                execute(cursor, "SELECT GET_LOCK(%s, 0)", [lease_name(pipeline)])
                row = cursor.fetchone()
        except pymysql.MySQLError as exc:
            raise failure(self.where, exc, self.config) from None
        if not (row and row[0] == 1):
            raise held_elsewhere(self.where, pipeline)

    # state

    def load_state(self, pipeline: str) -> PipelineState | None:
        try:
            with self.conn.cursor() as cursor:
                row = self._state_row(cursor, pipeline)
                if row is None:
                    return None
                if row[1]:
                    self._settle(cursor, pipeline)
                return load_state_json(pipeline, row[0])
        except pymysql.MySQLError as exc:
            raise failure(self.where, exc, self.config) from None

    @staticmethod
    def _state_row(cursor: pymysql.cursors.Cursor, pipeline: str) -> tuple[str, str | None] | None:
        execute(
            cursor, f"SELECT state, pending_swap FROM {quote(STATE_TABLE)} WHERE pipeline = %s", (pipeline,)
        )
        row = cursor.fetchone()
        return (row[0], row[1]) if row else None

    def _store_state(self, cursor: pymysql.cursors.Cursor, state: PipelineState, pending: str | None) -> None:
        execute(
            cursor,
            f"INSERT INTO {quote(STATE_TABLE)} (pipeline, state, updated_at, pending_swap)"
            " VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE state = VALUES(state),"
            " updated_at = VALUES(updated_at), pending_swap = VALUES(pending_swap)",
            (state.pipeline, dump_state(state), datetime.now(UTC).replace(tzinfo=None), pending),
        )

    # replace: the swap and its recovery

    def _settle(self, cursor: pymysql.cursors.Cursor, pipeline: str) -> None:
        """Finish the swap that a crash interrupted after ``pipeline``'s state was committed."""
        row = self._state_row(cursor, pipeline)
        if row is None or not row[1]:
            return
        swap = json.loads(row[1])
        self._swap(cursor, swap["stage"], swap["target"])
        execute(
            cursor, f"UPDATE {quote(STATE_TABLE)} SET pending_swap = NULL WHERE pipeline = %s", (pipeline,)
        )

    def _settle_target(self, cursor: pymysql.cursors.Cursor, target: str) -> None:
        execute(
            cursor, f"SELECT pipeline, pending_swap FROM {quote(STATE_TABLE)} WHERE pending_swap IS NOT NULL"
        )
        for pipeline, pending in cursor.fetchall():
            if json.loads(pending).get("target") == target:
                self._settle(cursor, pipeline)

    def _swap(self, cursor: pymysql.cursors.Cursor, stage: str, target: str) -> None:
        """Put ``stage`` in place of ``target`` atomically; idempotent, so recovery can repeat it."""
        old = aux_table(OLD_PREFIX, target)
        if self._exists(cursor, stage):
            execute(cursor, f"DROP TABLE IF EXISTS {quote_table(old)}")
            if self._exists(cursor, target):
                execute(
                    cursor,
                    f"RENAME TABLE {quote_table(target)} TO {quote_table(old)},"
                    f" {quote_table(stage)} TO {quote_table(target)}",
                )
            else:
                execute(cursor, f"RENAME TABLE {quote_table(stage)} TO {quote_table(target)}")
        execute(cursor, f"DROP TABLE IF EXISTS {quote_table(old)}")

    # tables

    @staticmethod
    def _exists(cursor: pymysql.cursors.Cursor, table: str) -> bool:
        database, name = split_table(table)
        execute(
            cursor,
            "SELECT 1 FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
            (database, name),
        )
        return cursor.fetchone() is not None

    @staticmethod
    def _existing_columns(cursor: pymysql.cursors.Cursor, table: str) -> list[str]:
        database, name = split_table(table)
        execute(
            cursor,
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
            (database, name),
        )
        return [r[0] for r in cursor.fetchall()]

    @staticmethod
    def _has_unique(cursor: pymysql.cursors.Cursor, table: str, keys: tuple[str, ...]) -> bool:
        database, name = split_table(table)
        execute(
            cursor,
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND NON_UNIQUE = 0",
            (database, name),
        )
        indexes: dict[str, set[str]] = {}
        for index, column in cursor.fetchall():
            indexes.setdefault(index, set()).add(column.lower())
        return {k.lower() for k in keys} in indexes.values()

    def prepare(self, spec: WriteSpec, schema: Schema) -> str:
        for column in schema.columns:
            check_column(column, self.where)
        try:
            with self.conn.cursor() as cursor:
                if spec.mode == "replace":
                    self._settle_target(cursor, spec.table)
                    staging = aux_table(STAGE_PREFIX, spec.table)
                    execute(cursor, f"DROP TABLE IF EXISTS {quote_table(staging)}")
                    self._create(cursor, staging, schema, spec)
                    return staging
                existing = self._existing_columns(cursor, spec.table)
                if not existing:
                    self._create(cursor, spec.table, schema, spec)
                    return spec.table
                known = {c.lower() for c in existing}  # MySQL column names ignore case
                missing = [c for c in schema.columns if c.name.lower() not in known]
                if missing and spec.schema_drift == "fail":
                    names = ", ".join(c.name for c in missing)
                    raise MovementError(
                        f"{self.where}: source has new columns not in {spec.table}: {names}"
                        " (schema_drift: fail)"
                    )
                if missing:
                    adds = ", ".join(
                        f"ADD COLUMN {quote(c.name)} {declared_type(c, collation=self.collation)}"
                        for c in missing
                    )
                    execute(cursor, f"ALTER TABLE {quote_table(spec.table)} {adds}")
                if (
                    spec.key_columns
                    and spec.mode in ("upsert", "incremental")
                    and not self._has_unique(cursor, spec.table, spec.key_columns)
                ):
                    raise MovementError(
                        f"{self.where}: table {spec.table} has no primary key or unique index on"
                        f" ({', '.join(spec.key_columns)}), which {spec.mode} by key needs"
                    )
                return spec.table
        except pymysql.MySQLError as exc:
            raise failure(self.where, exc, self.config) from None

    def _create(self, cursor: pymysql.cursors.Cursor, table: str, schema: Schema, spec: WriteSpec) -> None:
        widths = key_widths(schema, spec.key_columns, self.where)
        defs = [
            f"{quote(c.name)} {declared_type(c, collation=self.collation, key_bytes=widths.get(c.name))}"
            for c in schema.columns
        ]
        if spec.key_columns:
            defs.append(f"PRIMARY KEY ({', '.join(quote(k) for k in spec.key_columns)})")
        execute(
            cursor,
            f"CREATE TABLE {quote_table(table)} ({', '.join(defs)})"
            f" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={self.collation}",
        )

    # writing

    def write(
        self, table: str, spec: WriteSpec, schema: Schema, rows: list[Row], state: PipelineState
    ) -> None:
        values = self._convert(schema, rows)
        names = schema.names
        columns, marks = ", ".join(quote(n) for n in names), ", ".join("%s" for _ in names)
        sql = f"INSERT INTO {quote_table(table)} ({columns}) VALUES ({marks})"
        if spec.key_columns and spec.mode in ("upsert", "incremental"):
            updates = [n for n in names if n not in spec.key_columns] or [spec.key_columns[0]]
            sql += " ON DUPLICATE KEY UPDATE " + ", ".join(
                f"{quote(n)} = VALUES({quote(n)})" for n in updates
            )
        try:
            self.conn.begin()
            with self.conn.cursor() as cursor:
                if values:
                    # PyMySQL sends this as multi-row INSERTs of up to ~1 MB each
                    cursor.executemany(sql, values)
                self._store_state(cursor, state, None)
            self.conn.commit()
        except pymysql.MySQLError as exc:
            self._rollback()
            raise failure(self.where, exc, self.config) from None
        except BaseException:
            self._rollback()
            raise

    def _convert(self, schema: Schema, rows: list[Row]) -> list[Row]:
        convert = converter(schema, to_mysql)
        try:
            return [convert(r) for r in rows]
        except (TypeError, ValueError, AttributeError, OverflowError):
            pass
        for row in rows:  # find the value to name in the message
            for column, value in zip(schema.columns, row, strict=True):
                func = to_mysql(column.type)
                try:
                    if value is not None and func is not None:
                        func(value)
                except (TypeError, ValueError, AttributeError, OverflowError) as exc:
                    raise MovementError(
                        f"{self.where}: column {column.name!r} ({column.type}) cannot take a"
                        f" {type(value).__name__} value: {exc}"
                    ) from None
        raise MovementError(f"{self.where}: a row does not match the columns {', '.join(schema.names)}")

    def finish(self, table: str, spec: WriteSpec, state: PipelineState) -> None:
        try:
            with self.conn.cursor() as cursor:
                if spec.mode != "replace":
                    self.conn.begin()
                    self._store_state(cursor, state, None)
                    self.conn.commit()
                    return
                # See the class docstring: state first (with the swap to do), then the swap, then clear.
                pending = json.dumps({"stage": table, "target": spec.table})
                self.conn.begin()
                self._store_state(cursor, state, pending)
                self.conn.commit()
                self._settle(cursor, state.pipeline)
        except pymysql.MySQLError as exc:
            self._rollback()
            raise failure(self.where, exc, self.config) from None

    def _rollback(self) -> None:
        try:
            if self.conn.open:
                self.conn.rollback()
        except pymysql.MySQLError:
            pass  # the connection is gone; the server rolls the transaction back
