"""PostgreSQL as a source and a sink (psycopg 3).

Options: ``dsn`` (a libpq URL or key=value string, may hold ``${env:NAME}`` / ``${file:/path}``) and
``schema`` (default ``public``), which qualifies table names without one and, when set to another
schema, comes first on the session's ``search_path`` so queries see its tables. Sessions run in
UTC, so ``timestamptz`` values arrive aware in UTC. Reads go through a server-side cursor; each
sink write is one transaction holding a COPY of the batch and the pipeline's state.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.string import TextLoader

from workers.movement.connectors.postgres_connection import (
    cancel,
    connect,
    failure,
    limit,
    schema_option,
    timeouts,
)
from workers.movement.connectors.postgres_types import (
    BY_OID,
    BY_TYPE_NAME,
    COPY_OID,
    INT4_MAX,
    INT4_MIN,
    declared_type,
    quote_escaped,
    relation,
    split_table,
)
from workers.movement.errors import MovementError
from workers.movement.interface import (
    STATE_TABLE,
    PipelineState,
    ReadSpec,
    Sink,
    SinkCapabilities,
    Source,
    SourceBatch,
    WriteSpec,
    dump_state,
    held_elsewhere,
    lease_name,
    load_state_json,
)
from workers.movement.positions import tracked
from workers.movement.sqlbuild import base_relation, ordered_read, quote
from workers.movement.types import Column, LogicalType, Row, Schema, UnsupportedTypeError

T = LogicalType
log = logging.getLogger(__name__)

# --- source --------------------------------------------------------------------------------


class PostgresSource(Source):
    kind = "postgres"

    @property
    def where(self) -> str:
        return f"source {self.name}"

    def open(self) -> None:
        self.conn, self.secrets = connect(self.options, self.where, deadline=self.deadline)
        # carried as text: load as str, not uuid.UUID
        self.conn.adapters.register_loader("uuid", TextLoader)

    def close(self) -> None:
        reading = self.__dict__.pop("_reading", None)
        conn = self.__dict__.pop("conn", None)
        if reading is not None and conn is not None and not conn.closed:
            try:
                reading.close()
            except MovementError:
                pass  # the connection is being dropped anyway
        if conn is not None:
            conn.close()

    def interrupt(self) -> None:
        cancel(self.__dict__.get("conn"))

    def _qualified(self, spec: ReadSpec) -> ReadSpec:
        if spec.table is None:
            return spec
        return replace(spec, table=".".join(split_table(spec.table, schema_option(self.options))))

    def schema(self, spec: ReadSpec) -> Schema:
        spec = self._qualified(spec)
        try:
            limit(self.conn, self.deadline, f"{self.where}: before reading the schema")
            if spec.table is not None:
                regclass = self.conn.execute("SELECT to_regclass(%s)::oid", [relation(spec.table)]).fetchone()
                if regclass is None or regclass[0] is None:
                    raise MovementError(f"{self.where}: no such table: {spec.table}")
            with self.conn.cursor() as cursor:
                cursor.execute(f"SELECT * FROM {base_relation(spec, quote)} LIMIT 0")
                description = list(cursor.description or [])
            names = [d.name for d in description]
            if len(set(names)) != len(names):
                duplicates = sorted({n for n in names if names.count(n) > 1})
                raise MovementError(f"{self.where}: more than one column named {', '.join(duplicates)}")
            unknown = {d.type_code for d in description if d.type_code not in BY_OID}
            extra = self._extra_types(unknown)
            columns = []
            for d in description:
                kind = BY_OID.get(d.type_code) or extra[d.type_code]
                if not isinstance(kind, LogicalType):
                    raise UnsupportedTypeError(d.name, kind, self.where)
                decimal = kind is T.DECIMAL
                columns.append(
                    Column(
                        d.name,
                        kind,
                        precision=d.precision if decimal else None,
                        scale=d.scale if decimal else None,
                    )
                )
            if spec.table is None:
                return Schema(tuple(columns))
            not_null, pk = self._constraints(spec.table)
            columns = [replace(c, nullable=False) if c.name in not_null else c for c in columns]
            return Schema(tuple(columns), primary_key=pk)
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None

    def _extra_types(self, oids: set[int]) -> dict[int, LogicalType | str]:
        """Extension types (citext) and enums are text; anything else is its type's name (unsupported)."""
        if not oids:
            return {}
        rows = self.conn.execute(
            "SELECT oid::int, typname, typtype, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)",
            [list(oids)],
        ).fetchall()
        found: dict[int, LogicalType | str] = {
            oid: T.TEXT if name in BY_TYPE_NAME or typtype == "e" else pretty
            for oid, name, typtype, pretty in rows
        }
        return {oid: found.get(oid, f"oid {oid}") for oid in oids}

    def _constraints(self, table: str) -> tuple[set[str], tuple[str, ...]]:
        not_null = {
            row[0]
            for row in self.conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                " AND attnum > 0 AND NOT attisdropped AND attnotnull",
                [relation(table)],
            )
        }
        pk = self.conn.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = to_regclass(%s) AND i.indisprimary"
            " ORDER BY array_position(i.indkey::int2[], a.attnum)",
            [relation(table)],
        ).fetchall()
        return not_null, tuple(row[0] for row in pk)

    def batches(self, spec: ReadSpec, schema: Schema) -> Iterator[SourceBatch]:
        spec = self._qualified(spec)
        by_offset = not spec.cursor_column and not (spec.key_columns or schema.primary_key)
        if by_offset and any(c.type is T.JSON for c in schema.columns):
            # ordering by every column needs an ordering for json, which only jsonb has
            columns = ", ".join(
                f"{quote(c.name)}::jsonb AS {quote(c.name)}" if c.type is T.JSON else quote(c.name)
                for c in schema.columns
            )
            spec = replace(spec, table=None, query=f"SELECT {columns} FROM {base_relation(spec, quote)}")
        if spec.query is not None:
            spec = replace(spec, query=spec.query.replace("%", "%%"))
        # parameters are always passed, so every literal % (query text, names) must be escaped
        query, params, tracker = ordered_read(spec, schema, quote=quote_escaped, param="%s")
        self._reading = self._raw(query, list(params), spec.batch_size)
        yield from tracked(self._reading, tracker)

    def _raw(self, query: str, params: list[Any], batch_size: int) -> Iterator[list[Row]]:
        try:
            limit(self.conn, self.deadline, f"{self.where}: before reading")
            with self.conn.transaction():
                self.conn.execute("SET TRANSACTION READ ONLY")
                with self.conn.cursor(name="_mycelial_read") as cursor:
                    cursor.itersize = batch_size
                    cursor.execute(query, params)
                    while rows := cursor.fetchmany(batch_size):
                        yield rows
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None


# --- sink ----------------------------------------------------------------------------------


class PostgresSink(Sink):
    kind = "postgres"
    # COPY's text input reads these from the text a source stores them as (JSON and bytes excepted:
    # a source's text for them is ambiguous)
    capabilities = SinkCapabilities(
        reads_text=frozenset(T) - {T.JSON, T.BYTES},
    )

    @property
    def where(self) -> str:
        return f"destination {self.name}"

    @property
    def state_table(self) -> str:
        return relation(f"{schema_option(self.options)}.{STATE_TABLE}")

    def open(self) -> None:
        self.conn, self.secrets = connect(self.options, self.where, deadline=self.deadline)
        self._binary: dict[str, bool] = {}  # per written table: may its batches use binary COPY
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mycelial-commit-{self.name}")
        self._pending: Future[None] | None = None
        try:
            self._limit("before creating the state table")
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.state_table}"
                " (pipeline TEXT PRIMARY KEY, state JSONB NOT NULL, updated_at TIMESTAMPTZ)"
            )
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None

    def close(self) -> None:
        committer = self.__dict__.pop("_committer", None)
        try:
            if committer is not None:
                try:
                    self._settle()  # a run that finished has settled already: this one ended early
                except MovementError as exc:
                    log.warning("%s: the last batch did not commit: %s", self.where, exc)
                finally:
                    committer.shutdown()
        finally:
            conn = self.__dict__.pop("conn", None)
            if conn is not None:
                conn.close()

    def interrupt(self) -> None:
        cancel(self.__dict__.get("conn"))

    def _limit(self, doing: str) -> None:
        limit(self.conn, self.deadline, f"{self.where}: {doing}")

    def _check_commit(self, doing: str) -> None:
        """The last word before a COMMIT: once the deadline passed, nothing more commits."""
        self.deadline.check(f"{self.where}: before committing {doing}")

    def lease(self, pipeline: str) -> None:
        """A session advisory lock, released when the connection closes (or its daemon dies)."""
        try:
            self._limit("before taking the lease")
            row = self.conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [lease_name(pipeline)]
            ).fetchone()
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None
        if not (row and row[0]):
            raise held_elsewhere(self.where, pipeline)

    def load_state(self, pipeline: str) -> PipelineState | None:
        self._settle()
        try:
            self._limit("before reading the state")
            row = self.conn.execute(
                f"SELECT state::text FROM {self.state_table} WHERE pipeline = %s", [pipeline]
            ).fetchone()
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None
        return load_state_json(pipeline, row[0]) if row else None

    def _existing_columns(self, table: str) -> dict[str, int]:
        """Column name → type OID; empty when the table does not exist."""
        rows = self.conn.execute(
            "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [relation(table)],
        ).fetchall()
        return {row[0]: row[1] for row in rows}

    def prepare(self, spec: WriteSpec, schema: Schema) -> str:
        self._settle()
        namespace, name = split_table(spec.table, schema_option(self.options))
        target = f"{namespace}.{name}"
        table = target
        try:
            self._limit(f"before preparing {spec.table}")
            with self.conn.transaction():
                if spec.mode == "replace":
                    table = f"{namespace}._mycelial_stage_{name}"
                    self.conn.execute(f"DROP TABLE IF EXISTS {relation(table)}")
                    self._create(table, schema, spec)
                elif not (existing := self._existing_columns(target)):
                    self._create(target, schema, spec)
                else:
                    missing = [c for c in schema.columns if c.name not in existing]
                    if missing and spec.schema_drift == "fail":
                        names = ", ".join(c.name for c in missing)
                        raise MovementError(
                            f"{self.where}: source has new columns not in {spec.table}: {names}"
                            " (schema_drift: fail)"
                        )
                    for column in missing:
                        definition = f"{quote(column.name)} {declared_type(column)}"
                        self.conn.execute(f"ALTER TABLE {relation(target)} ADD COLUMN {definition}")
                self._binary[table] = self._binary_compatible(table, schema)
                self._check_commit(f"the preparation of {spec.table}")
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None
        return table

    def _binary_compatible(self, table: str, schema: Schema) -> bool:
        """Binary COPY needs the exact column types; a user's table with others gets text COPY (casts)."""
        existing = self._existing_columns(table)
        return all(existing.get(c.name) == COPY_OID[c.type] for c in schema.columns)

    def _create(self, table: str, schema: Schema, spec: WriteSpec) -> None:
        defs = [f"{quote(c.name)} {declared_type(c)}" for c in schema.columns]
        if spec.key_columns:
            defs.append(f"PRIMARY KEY ({', '.join(quote(k) for k in spec.key_columns)})")
        self.conn.execute(f"CREATE TABLE {relation(table)} ({', '.join(defs)})")

    def write(
        self, table: str, spec: WriteSpec, schema: Schema, rows: list[Row], state: PipelineState
    ) -> None:
        """Send the batch in a transaction, and leave its end (the server's last rows, the state, the
        commit) to a thread: the next batch is read meanwhile. Every other call waits for it first."""
        self._settle()
        columns = ", ".join(quote(n) for n in schema.names)
        keys = list(spec.key_columns) if spec.mode in ("upsert", "incremental") else []
        try:
            binary = self._binary.get(table)
            if binary is None:
                binary = self._binary[table] = self._binary_compatible(table, schema)
            # stored values (text, numbers) go as text for PostgreSQL to parse; typed ones in binary
            binary = binary and not spec.as_stored
            if binary:
                self._check_ranges(schema, rows)
            else:
                rows = self._json_as_text(schema, rows)
            bounded = timeouts(self.deadline, f"{self.where}: before writing a batch", local=True)
            self.conn.execute("BEGIN" if bounded is None else f"BEGIN; {bounded}")
            try:
                then: list[str] = []
                if rows and keys:
                    self.conn.execute(
                        f"CREATE TEMP TABLE _mycelial_batch ON COMMIT DROP AS"
                        f" SELECT {columns} FROM {relation(table)} WITH NO DATA"
                    )
                    end_copy = self._send("_mycelial_batch", columns, schema, rows, binary=binary)
                    then.append(self._merge(table, schema.names, keys))
                elif rows:
                    end_copy = self._send(relation(table), columns, schema, rows, binary=binary)
                else:
                    end_copy = None
            except BaseException:
                self._rollback()
                raise
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise MovementError(f"{self.where}: a value does not fit its column type: {exc}") from None
        self._pending = self._committer.submit(
            self._commit, end_copy, then, state.pipeline, dump_state(state)
        )

    def _commit(
        self, end_copy: Callable[[], None] | None, then: list[str], pipeline: str, state: str
    ) -> None:
        try:
            if end_copy is not None:
                end_copy()
            # the COPY's limit counted from BEGIN; the statements after it get the time now left
            bounded = timeouts(self.deadline, f"{self.where}: before storing a batch's state", local=True)
            if bounded is not None:
                self.conn.execute(bounded)
            for statement in then:
                self.conn.execute(statement)
            self._store_state_json(pipeline, state)
            self._check_commit("a batch")
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _settle(self) -> None:
        """Wait for the batch being committed; raise what kept it from committing."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None

    def _rollback(self) -> None:
        if not self.conn.closed and self.conn.info.transaction_status != TransactionStatus.IDLE:
            try:
                self.conn.execute("ROLLBACK")
            except psycopg.Error:
                pass  # the connection is gone, and the transaction with it

    def _check_ranges(self, schema: Schema, rows: list[Row]) -> None:
        """The driver's binary int4 dumper keeps the low 32 bits of a larger int instead of failing."""
        for i, column in enumerate(schema.columns):
            if column.type is T.INTEGER:
                values = [row[i] for row in rows if row[i] is not None]
                if values and not (INT4_MIN <= min(values) and max(values) <= INT4_MAX):
                    raise MovementError(
                        f"{self.where}: column {column.name!r} has a value outside the INTEGER range"
                    )

    @staticmethod
    def _json_as_text(schema: Schema, rows: list[Row]) -> list[Row]:
        """Text COPY dumps each value by its Python type, which for a parsed JSON value is not JSON."""
        json_columns = [i for i, c in enumerate(schema.columns) if c.type is T.JSON]
        if not json_columns or not rows:
            return rows
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for i in json_columns:
            columns[i] = [None if v is None else json.dumps(v, ensure_ascii=False) for v in columns[i]]
        return list(zip(*columns, strict=True))

    def _send(
        self, target: str, columns: str, schema: Schema, rows: list[Row], *, binary: bool
    ) -> Callable[[], None]:
        """COPY the rows to the server; the function returned ends the COPY (and waits for the server)."""
        options = " (FORMAT BINARY)" if binary else ""
        stack = ExitStack()
        try:
            cursor = stack.enter_context(self.conn.cursor())
            copy = stack.enter_context(cursor.copy(f"COPY {target} ({columns}) FROM STDIN{options}"))
            if binary:
                copy.set_types([COPY_OID[c.type] for c in schema.columns])
            for row in rows:
                copy.write_row(row)
        except BaseException:
            if not stack.__exit__(*sys.exc_info()):  # aborts the COPY
                raise
        return stack.close

    @staticmethod
    def _merge(table: str, names: list[str], keys: list[str]) -> str:
        """Upsert the batch; of rows sharing a key, the last one written wins (COPY order = ctid order)."""
        columns = ", ".join(quote(n) for n in names)
        key_list = ", ".join(quote(k) for k in keys)
        updates = [n for n in names if n not in keys]
        action = (
            "DO UPDATE SET " + ", ".join(f"{quote(n)} = EXCLUDED.{quote(n)}" for n in updates)
            if updates
            else "DO NOTHING"
        )
        return (
            f"INSERT INTO {relation(table)} ({columns})"
            f" SELECT DISTINCT ON ({key_list}) {columns} FROM _mycelial_batch ORDER BY {key_list}, ctid DESC"
            f" ON CONFLICT ({key_list}) {action}"
        )

    def finish(self, table: str, spec: WriteSpec, state: PipelineState) -> None:
        self._settle()
        namespace, name = split_table(spec.table, schema_option(self.options))
        target = f"{namespace}.{name}"
        try:
            self._limit("before completing the run")
            with self.conn.transaction():
                if spec.mode == "replace":
                    self.conn.execute(f"DROP TABLE IF EXISTS {relation(target)}")
                    self.conn.execute(f"ALTER TABLE {relation(table)} RENAME TO {quote(name)}")
                    self._rename_primary_key(target, name)
                self._store_state(state)
                self._check_commit("the completed run")
        except psycopg.Error as exc:
            raise failure(self.where, exc, self.secrets) from None

    def _rename_primary_key(self, table: str, name: str) -> None:
        """The staging table's key index keeps its name; free it for the next run's staging table."""
        row = self.conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'",
            [relation(table)],
        ).fetchone()
        if row is not None:
            self.conn.execute(
                f"ALTER TABLE {relation(table)} RENAME CONSTRAINT {quote(row[0])} TO {quote(name + '_pkey')}"
            )

    def _store_state(self, state: PipelineState) -> None:
        self._store_state_json(state.pipeline, dump_state(state))

    def _store_state_json(self, pipeline: str, state: str) -> None:
        self.conn.execute(
            f"INSERT INTO {self.state_table} (pipeline, state, updated_at) VALUES (%s, %s::jsonb, now())"
            " ON CONFLICT (pipeline) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
            [pipeline, state],
        )
