"""SQL text shared by the SQL connectors: the ordered, resumable read of a table or a query."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from workers.movement.interface import ReadSpec
from workers.movement.positions import CursorTracker, KeyTracker, OffsetTracker, Tracker
from workers.movement.types import Schema


def quote(identifier: str) -> str:
    """An SQL-standard quoted identifier (SQLite, PostgreSQL; MySQL uses backticks)."""
    return '"' + identifier.replace('"', '""') + '"'


def base_relation(spec: ReadSpec, quote: Callable[[str], str]) -> str:
    if spec.query is not None:
        return f"({spec.query.strip().rstrip(';')}) AS _mycelial_q"
    assert spec.table is not None
    return ".".join(quote(part) for part in spec.table.split("."))


def ordered_read(
    spec: ReadSpec, schema: Schema, *, quote: Callable[[str], str], param: str
) -> tuple[str, Sequence[Any], Tracker]:
    """SELECT text, its parameters and the tracker that turns rows into resume positions.

    Order: the cursor column for incremental reads; else the key columns (the pipeline's, or the
    table's primary key), read by keyset; else every column, read by offset.
    """
    columns = ", ".join(quote(c) for c in schema.names)
    relation = base_relation(spec, quote)
    start = spec.start
    if spec.cursor_column:
        cursor_tracker = CursorTracker(schema.index(spec.cursor_column), start)
        where, params = "", []
        if cursor_tracker.start_value is not None:
            where, params = f" WHERE {quote(spec.cursor_column)} >= {param}", [cursor_tracker.start_value]
        else:
            where = f" WHERE {quote(spec.cursor_column)} IS NOT NULL"
        return (
            f"SELECT {columns} FROM {relation}{where} ORDER BY {quote(spec.cursor_column)}",
            params,
            cursor_tracker,
        )
    keys = list(spec.key_columns or schema.primary_key)
    if keys:
        key_tracker = KeyTracker([schema.index(k) for k in keys], start)
        where, params = "", []
        if key_tracker.last is not None:
            lhs = ", ".join(quote(k) for k in keys)
            rhs = ", ".join(param for _ in keys)
            where, params = f" WHERE ({lhs}) > ({rhs})", list(key_tracker.last)
        order = ", ".join(quote(k) for k in keys)
        return f"SELECT {columns} FROM {relation}{where} ORDER BY {order}", params, key_tracker
    offset_tracker = OffsetTracker(start)
    order = ", ".join(quote(c) for c in schema.names)
    sql = f"SELECT {columns} FROM {relation} ORDER BY {order}"
    if offset_tracker.offset:
        sql += f" LIMIT {2**62} OFFSET {int(offset_tracker.offset)}"
    return sql, [], offset_tracker
