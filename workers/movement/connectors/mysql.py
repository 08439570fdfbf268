"""MySQL and MariaDB as a source and a sink, through PyMySQL (pure Python).

The options, connections and driver errors are in ``mysql_connection.py``; the type table, the
declared column types and the value conversions in ``mysql_types.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace as replaced
from datetime import UTC, datetime
from typing import Any

import pymysql
import pymysql.cursors

from workers.movement.connectors.mysql_connection import (
    CONNECT_TIMEOUT,
    Connection,
    connect,
    execute,
    failure,
    is_mariadb,
    kill_query,
    limit,
    settings,
)
from workers.movement.connectors.mysql_types import (
    DECODERS,
    aux_table,
    check_column,
    converter,
    declared_type,
    from_mysql,
    key_widths,
    quote,
    quote_table,
    result_column,
    split_table,
    table_column,
    to_mysql,
)
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
from workers.movement.sqlbuild import ordered_read
from workers.movement.types import Row, Schema

STAGE_PREFIX = "_mycelial_stage_"
OLD_PREFIX = "_mycelial_old_"


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
            wait = self.deadline.bound(CONNECT_TIMEOUT)
            self.conn = conn = connect(self.config, self.where, conv=DECODERS, timeout=wait)
            self.mariadb = is_mariadb(conn)
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

    def interrupt(self) -> None:
        config = self.__dict__.get("config")  # none yet: open() has not got as far as connecting
        if config is not None:
            kill_query(config, self.__dict__.get("conn"), self.where)

    def _limit(self, cursor: pymysql.cursors.Cursor, doing: str) -> None:
        limit(cursor, self.deadline, f"{self.where}: {doing}", mariadb=self.mariadb)

    def schema(self, spec: ReadSpec) -> Schema:
        try:
            with self._connection().cursor() as cursor:
                self._limit(cursor, "before reading the schema")
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
            self._limit(cursor, "before reading")
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
        self.conn = connect(self.config, self.where, timeout=self.deadline.bound(CONNECT_TIMEOUT))
        try:
            self.mariadb = is_mariadb(self.conn)
            with self.conn.cursor() as cursor:
                self._limit(cursor, "before creating the state table")
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

    def interrupt(self) -> None:
        config = self.__dict__.get("config")  # none yet: open() has not got as far as connecting
        if config is not None:
            kill_query(config, self.__dict__.get("conn"), self.where)

    def _limit(self, cursor: pymysql.cursors.Cursor, doing: str) -> None:
        limit(cursor, self.deadline, f"{self.where}: {doing}", mariadb=self.mariadb)

    def _check_commit(self, doing: str) -> None:
        """The last word before a COMMIT: once the deadline passed, nothing more commits."""
        self.deadline.check(f"{self.where}: before committing {doing}")

    def lease(self, pipeline: str) -> None:
        """A named lock, released when the connection closes (or its daemon dies)."""
        try:
            with self.conn.cursor() as cursor:
                self._limit(cursor, "before taking the lease")
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
                self._limit(cursor, "before reading the state")
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
                self._limit(cursor, f"before preparing {spec.table}")
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
            with self.conn.cursor() as cursor:
                self._limit(cursor, "before writing a batch")
                self.conn.begin()
                if values:
                    # PyMySQL sends this as multi-row INSERTs of up to ~1 MB each
                    cursor.executemany(sql, values)
                self._store_state(cursor, state, None)
            self._check_commit("a batch")
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
                self._limit(cursor, "before completing the run")
                if spec.mode != "replace":
                    self.conn.begin()
                    self._store_state(cursor, state, None)
                    self._check_commit("the completed run")
                    self.conn.commit()
                    return
                # See the class docstring: state first (with the swap to do), then the swap, then clear.
                pending = json.dumps({"stage": table, "target": spec.table})
                self.conn.begin()
                self._store_state(cursor, state, pending)
                self._check_commit("the completed run")
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
