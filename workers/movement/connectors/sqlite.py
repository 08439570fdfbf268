"""SQLite as a source and a sink, on a file under the daemon's allowed roots.

The daemon confines ``path`` before the connector runs (``workers.confinement``); here, the files
SQLite keeps beside a database (``-wal``, ``-shm``, ``-journal``) and the lease's lock file must
not be symbolic links, the file SQLite opened must be the one the path led to, and no statement may
``ATTACH`` another file.

SQLite stores few types natively, so the sink declares column types that say the logical type
and keep the right storage affinity: ``DECIMAL TEXT(p,s)`` and ``JSON TEXT`` keep exact text,
``TIMESTAMPTZ`` holds ISO-8601 with ``+00:00``, ``BOOLEAN`` holds 0/1.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from workers.confinement.paths import symbolic_links
from workers.movement import plain
from workers.movement.errors import MovementError
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
from workers.movement.sqlbuild import ordered_read, quote
from workers.movement.types import Column, LogicalType, Row, Schema, UnsupportedTypeError
from workers.secrets import resolve

T = LogicalType
BUSY_TIMEOUT = 30.0  # seconds a write waits for another writer to let go of the database


SIDECARS = ("-wal", "-shm", "-journal")  # what SQLite creates beside a database, by name


def database_path(options: dict[str, Any], home: Path) -> Path:
    path = Path(resolve(str(options["path"]))).expanduser()
    return path if path.is_absolute() else home / path


def lock_path(database: Path, pipeline: str) -> Path:
    return database.parent / f".{database.name}.{lease_name(pipeline).replace(':', '-')}.lock"


def _refuse_linked_sidecars(database: Path, where: str) -> None:
    """SQLite follows a link in its journal's place: one there could make it write anywhere."""
    linked = symbolic_links(Path(f"{database}{suffix}") for suffix in SIDECARS)
    if linked:
        raise MovementError(f"{where}: {linked[0]} is a symbolic link; SQLite would follow it (not opened)")


def _no_attach(action: int, *_: object) -> int:
    """An authorizer: a query can name only the database it was given, never ATTACH a file."""
    denied = action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH)
    return sqlite3.SQLITE_DENY if denied else sqlite3.SQLITE_OK


def _connect(database: Path, where: str, *, read_only: bool = False, **kwargs: Any) -> sqlite3.Connection:
    """A connection to ``database`` (already resolved by the caller's ``realpath``), refused when
    SQLite opened another file: a link swapped in after the check."""
    expected = os.path.realpath(database)
    _refuse_linked_sidecars(Path(expected), where)
    target = f"{Path(expected).as_uri()}?mode=ro" if read_only else expected
    conn: sqlite3.Connection = sqlite3.connect(target, uri=read_only, **kwargs)
    opened = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if opened != expected:
        conn.close()
        raise MovementError(f"{where}: {database} led to {opened} once opened, not {expected}; not used")
    conn.set_authorizer(_no_attach)
    return conn


# --- types ---------------------------------------------------------------------------------

_DECLARED = re.compile(r"^\s*([A-Za-z_ ]+?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")


def logical_type(declared: str, column: str, where: str) -> Column:
    """Map a declared SQLite column type (ours or a user's) to a logical column."""
    match = _DECLARED.match(declared or "")
    words = match.group(1).upper().split() if match else []
    precision = int(match.group(2)) if match and match.group(2) else None
    scale = int(match.group(3)) if match and match.group(3) else None
    head = " ".join(words)
    if not words:
        return Column(column, T.TEXT)
    if head in {"BIGINT", "INT8", "UNSIGNED BIG INT"}:
        return Column(column, T.BIGINT)
    if "INT" in head:
        return Column(column, T.BIGINT if head == "INTEGER" else T.INTEGER)
    if words[0] in {"DECIMAL", "NUMERIC"}:
        return Column(column, T.DECIMAL, precision=precision, scale=scale)
    if words[0] in {"REAL", "DOUBLE", "FLOAT"} or head == "DOUBLE PRECISION":
        return Column(column, T.FLOAT)
    if words[0] in {"BOOLEAN", "BOOL"}:
        return Column(column, T.BOOLEAN)
    if words[0] == "DATE":
        return Column(column, T.DATE)
    if words[0] in {"TIMESTAMPTZ"} or head.startswith("TIMESTAMP WITH TIME ZONE"):
        return Column(column, T.TIMESTAMPTZ)
    if words[0] in {"TIMESTAMP", "DATETIME"}:
        return Column(column, T.TIMESTAMP)
    if words[0] == "JSON":
        return Column(column, T.JSON)
    if words[0] == "BLOB":
        return Column(column, T.BYTES)
    if any(w in head for w in ("CHAR", "TEXT", "CLOB")):
        return Column(column, T.TEXT)
    raise UnsupportedTypeError(column, declared, where)


def declared_type(column: Column) -> str:
    if column.type is T.DECIMAL:
        args = f"({column.precision},{column.scale or 0})" if column.precision else ""
        return f"DECIMAL TEXT{args}"
    return {
        T.INTEGER: "INTEGER",
        T.BIGINT: "BIGINT",
        T.FLOAT: "DOUBLE",
        T.TEXT: "TEXT",
        T.BOOLEAN: "BOOLEAN",
        T.DATE: "DATE",
        T.TIMESTAMP: "TIMESTAMP",
        T.TIMESTAMPTZ: "TIMESTAMPTZ",
        T.BYTES: "BLOB",
        T.JSON: "JSON TEXT",
    }[column.type]


def from_sqlite(kind: LogicalType) -> Callable[[Any], Any] | None:
    if kind is T.DECIMAL:
        return lambda v: v if type(v) is Decimal else Decimal(str(v))
    if kind is T.BOOLEAN:
        return _boolean
    if kind is T.DATE:
        return lambda v: date.fromisoformat(str(v)[:10])
    if kind is T.TIMESTAMP:
        return _naive
    if kind is T.TIMESTAMPTZ:
        return _aware
    if kind is T.JSON:
        return lambda v: json.loads(v) if isinstance(v, str | bytes) else v
    if kind is T.BYTES:
        return lambda v: bytes(v) if not isinstance(v, str) else v.encode()
    if kind is T.FLOAT:
        return lambda v: v if type(v) is float else float(v)
    return None


def _boolean(value: Any) -> bool:
    if type(value) is int:
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "t", "yes"}
    return bool(int(value))


def _naive(value: Any) -> datetime:
    parsed = datetime.fromisoformat(value if type(value) is str else str(value))
    return parsed if parsed.tzinfo is None else parsed.replace(tzinfo=None)


def _aware(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def to_sqlite(kind: LogicalType) -> Callable[[Any], Any] | None:
    if kind is T.DECIMAL:
        return str
    if kind is T.BOOLEAN:
        return int
    if kind in (T.DATE, T.TIMESTAMP):
        return lambda v: v.isoformat()
    if kind is T.TIMESTAMPTZ:
        return lambda v: v.astimezone(UTC).isoformat()
    if kind is T.JSON:
        return lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False)
    return None


#: the types whose stored values may go unconverted, each with the check a batch's values must pass
#: (numbers and plain decimal text, common ISO-8601 text: see ``plain``); booleans may not, as
#: SQLite may hold 2 or 'yes' for them
_PLAIN: dict[LogicalType, plain.Check] = {
    T.FLOAT: plain.number,
    T.DECIMAL: plain.number,
    T.DATE: plain.iso,
    T.TIMESTAMP: plain.iso,
    T.TIMESTAMPTZ: plain.iso,
}


def converter(
    schema: Schema,
    make: Callable[[LogicalType], Callable[[Any], Any] | None],
    keep: frozenset[str] = frozenset(),
) -> Callable[[Row], Row] | None:
    """One function that converts a whole row, or None when no column needs converting; columns
    that need nothing, and those in ``keep``, cost nothing.

    The function is generated for the schema (``lambda r: (r[0], f1(r[1]) if ... , ...)``): a loop
    over columns per row costs more than the conversions themselves on wide, fast reads.
    """
    funcs = [None if c.name in keep else make(c.type) for c in schema.columns]
    if not any(funcs):
        return None
    names = {f"f{i}": f for i, f in enumerate(funcs) if f is not None}
    parts = [
        f"r[{i}]" if f is None else f"(None if r[{i}] is None else f{i}(r[{i}]))" for i, f in enumerate(funcs)
    ]
    generated: Callable[[Row], Row] = eval(f"lambda r: ({', '.join(parts)},)", names)  # noqa: S307
    return generated


# --- source --------------------------------------------------------------------------------


class SqliteSource(Source):
    kind = "sqlite"

    def open(self) -> None:
        path = database_path(self.options, self.home)
        if not path.exists():
            raise MovementError(f"source {self.name}: database file {path} does not exist")
        self.conn = _connect(path, f"source {self.name}", read_only=True)

    def close(self) -> None:
        conn = self.__dict__.pop("conn", None)
        if conn is not None:
            conn.close()

    def interrupt(self) -> None:
        _interrupt(self.__dict__.get("conn"))

    def schema(self, spec: ReadSpec) -> Schema:
        where = f"source {self.name}"
        try:
            if spec.table is not None:
                info = self.conn.execute(f"PRAGMA table_info({quote(spec.table)})").fetchall()
                if not info:
                    raise MovementError(f"{where}: no such table: {spec.table}")
                columns = tuple(logical_type(row[2], row[1], where) for row in info)
                pk = tuple(row[1] for row in sorted(info, key=lambda r: r[5]) if row[5])
                return Schema(columns, primary_key=pk)
            assert spec.query is not None
            cursor = self.conn.execute(f"SELECT * FROM ({spec.query.strip().rstrip(';')}) LIMIT 1")
        except sqlite3.Error as exc:
            raise MovementError(f"{where}: {exc}") from None
        first = cursor.fetchone()
        names = [d[0] for d in cursor.description]
        return Schema(tuple(Column(n, _infer(first[i] if first else None)) for i, n in enumerate(names)))

    def stored_columns(self, schema: Schema, reads_text: frozenset[LogicalType]) -> frozenset[str]:
        return frozenset(c.name for c in schema.columns if c.type in _PLAIN.keys() & reads_text)

    def batches(self, spec: ReadSpec, schema: Schema) -> Iterator[SourceBatch]:
        sql, params, tracker = ordered_read(spec, schema, quote=quote, param="?")
        checks = [
            (i, c.name, _PLAIN[c.type]) for i, c in enumerate(schema.columns) if c.name in spec.as_stored
        ]
        converters: dict[frozenset[str], Callable[[Row], Row] | None] = {}
        try:
            cursor = self.conn.execute(sql, [_to_param(p) for p in params])
        except sqlite3.Error as exc:
            raise MovementError(f"source {self.name}: {exc}") from None

        def raw() -> Iterator[list[Row]]:
            while rows := cursor.fetchmany(spec.batch_size):
                # a stored column goes unconverted in a batch where all its values are plain
                odd = frozenset(
                    name for i, name, check in checks if not check([r[i] for r in rows if r[i] is not None])
                )
                if odd not in converters:
                    converters[odd] = converter(schema, from_sqlite, keep=spec.as_stored - odd)
                convert = converters[odd]
                yield rows if convert is None else [convert(r) for r in rows]

        yield from tracked(raw(), tracker)


def _infer(value: Any) -> LogicalType:
    if isinstance(value, bool):
        return T.BOOLEAN
    if isinstance(value, int):
        return T.BIGINT
    if isinstance(value, float):
        return T.FLOAT
    if isinstance(value, bytes):
        return T.BYTES
    return T.TEXT


def _to_param(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


# --- sink ----------------------------------------------------------------------------------


class SqliteSink(Sink):
    kind = "sqlite"

    def open(self) -> None:
        path = database_path(self.options, self.home)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = _connect(
            path, f"destination {self.name}", isolation_level=None, timeout=self.deadline.bound(BUSY_TIMEOUT)
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {STATE_TABLE}"
            " (pipeline TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at TEXT)"
        )

    def close(self) -> None:
        conn = self.__dict__.pop("conn", None)
        if conn is not None:
            conn.close()
        lock = self.__dict__.pop("_lease", None)
        if lock is not None:
            lock.close()  # and with it the lock

    def interrupt(self) -> None:
        _interrupt(self.__dict__.get("conn"))

    def _limit(self, doing: str) -> None:
        """Wait for another writer's lock no longer than the time left (SQLite has no other waits)."""
        ms = self.deadline.statement_ms(f"destination {self.name}: {doing}")
        if ms is not None:
            self.conn.execute(f"PRAGMA busy_timeout = {min(ms, int(BUSY_TIMEOUT * 1000))}")

    def _check_commit(self, doing: str) -> None:
        """The last word before a COMMIT: once the deadline passed, nothing more commits."""
        self.deadline.check(f"destination {self.name}: before committing {doing}")

    def lease(self, pipeline: str) -> None:
        """An exclusive lock on a file beside the database, released when it is closed (or its
        daemon dies): SQLite's own locks last one transaction, a lease a whole run."""
        path = lock_path(database_path(self.options, self.home), pipeline)
        try:
            # never through a link: the lock file is created beside the database, nowhere else
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            why = exc.strerror
            raise MovementError(f"destination {self.name}: cannot open lock file {path}: {why}") from None
        lock = os.fdopen(fd, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise held_elsewhere(f"destination {self.name}", pipeline) from None
        self._lease = lock

    def load_state(self, pipeline: str) -> PipelineState | None:
        row = self.conn.execute(f"SELECT state FROM {STATE_TABLE} WHERE pipeline = ?", [pipeline]).fetchone()
        return load_state_json(pipeline, row[0]) if row else None

    def _existing_columns(self, table: str) -> dict[str, str]:
        return {row[1]: row[2] for row in self.conn.execute(f"PRAGMA table_info({quote(table)})")}

    def prepare(self, spec: WriteSpec, schema: Schema) -> str:
        where = f"destination {self.name}"
        try:
            self._limit(f"before preparing {spec.table}")
            if spec.mode == "replace":
                staging = f"_mycelial_stage_{spec.table}"
                self.conn.execute(f"DROP TABLE IF EXISTS {quote(staging)}")
                self._create(staging, schema, spec)
                return staging
            existing = self._existing_columns(spec.table)
            if not existing:
                self._create(spec.table, schema, spec)
                return spec.table
            missing = [c for c in schema.columns if c.name not in existing]
            if missing and spec.schema_drift == "fail":
                names = ", ".join(c.name for c in missing)
                raise MovementError(
                    f"{where}: source has new columns not in {spec.table}: {names} (schema_drift: fail)"
                )
            for column in missing:
                self.conn.execute(
                    f"ALTER TABLE {quote(spec.table)} ADD COLUMN {quote(column.name)} {declared_type(column)}"
                )
            return spec.table
        except sqlite3.Error as exc:
            raise MovementError(f"{where}: {exc}") from None

    def _create(self, table: str, schema: Schema, spec: WriteSpec) -> None:
        defs = [f"{quote(c.name)} {declared_type(c)}" for c in schema.columns]
        if spec.key_columns:
            defs.append(f"PRIMARY KEY ({', '.join(quote(k) for k in spec.key_columns)})")
        self.conn.execute(f"CREATE TABLE {quote(table)} ({', '.join(defs)})")

    def write(
        self, table: str, spec: WriteSpec, schema: Schema, rows: list[Row], state: PipelineState
    ) -> None:
        convert = converter(schema, to_sqlite) or tuple
        names = schema.names
        columns, marks = ", ".join(quote(n) for n in names), ", ".join("?" for _ in names)
        sql = f"INSERT INTO {quote(table)} ({columns}) VALUES ({marks})"
        if spec.key_columns and spec.mode in ("upsert", "incremental"):
            updates = [n for n in names if n not in spec.key_columns]
            action = (
                "DO UPDATE SET " + ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in updates)
                if updates
                else "DO NOTHING"
            )
            sql += f" ON CONFLICT ({', '.join(quote(k) for k in spec.key_columns)}) {action}"
        try:
            self._limit("before writing a batch")
            self.conn.execute("BEGIN IMMEDIATE")
            if rows:
                self.conn.executemany(sql, [convert(r) for r in rows])
            self._store_state(state)
            self._check_commit("a batch")
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise MovementError(f"destination {self.name}: {exc}") from None
        except BaseException:
            self._rollback()
            raise

    def finish(self, table: str, spec: WriteSpec, state: PipelineState) -> None:
        try:
            self._limit("before completing the run")
            self.conn.execute("BEGIN IMMEDIATE")
            if spec.mode == "replace":
                self.conn.execute(f"DROP TABLE IF EXISTS {quote(spec.table)}")
                self.conn.execute(f"ALTER TABLE {quote(table)} RENAME TO {quote(spec.table)}")
            self._store_state(state)
            self._check_commit("the completed run")
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise MovementError(f"destination {self.name}: {exc}") from None
        except BaseException:
            self._rollback()
            raise

    def _store_state(self, state: PipelineState) -> None:
        self.conn.execute(
            f"INSERT INTO {STATE_TABLE} (pipeline, state, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (pipeline) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            [state.pipeline, dump_state(state), datetime.now(UTC).isoformat()],
        )

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _interrupt(conn: sqlite3.Connection | None) -> None:
    """Abort the statement running on ``conn`` (sqlite3's interrupt is safe from another thread)."""
    if conn is not None:
        try:
            conn.interrupt()
        except sqlite3.ProgrammingError:
            pass  # closed meanwhile: nothing runs on it
