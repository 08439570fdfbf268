"""Names and types for the PostgreSQL connector (``postgres.py``): quoting, the logical type of
each PostgreSQL type read, and the type a sink column gets (also the COPY type of its values)."""

from __future__ import annotations

import psycopg

from workers.movement.sqlbuild import quote
from workers.movement.types import Column, LogicalType

T = LogicalType


def quote_escaped(identifier: str) -> str:
    return quote(identifier).replace("%", "%%")


def relation(table: str) -> str:
    """A quoted, possibly schema-qualified table name (``schema.table``)."""
    return ".".join(quote(part) for part in table.split("."))


def split_table(table: str, schema: str) -> tuple[str, str]:
    namespace, dot, name = table.rpartition(".")
    return (namespace if dot else schema), name


# --- types ---------------------------------------------------------------------------------

BY_TYPE_NAME: dict[str, LogicalType] = {
    "int2": T.INTEGER,
    "int4": T.INTEGER,
    "int8": T.BIGINT,
    "float4": T.FLOAT,
    "float8": T.FLOAT,
    "numeric": T.DECIMAL,
    "text": T.TEXT,
    "varchar": T.TEXT,
    "bpchar": T.TEXT,
    "name": T.TEXT,
    "uuid": T.TEXT,
    "citext": T.TEXT,
    "bool": T.BOOLEAN,
    "date": T.DATE,
    "timestamp": T.TIMESTAMP,
    "timestamptz": T.TIMESTAMPTZ,
    "bytea": T.BYTES,
    "json": T.JSON,
    "jsonb": T.JSON,
}
BY_OID: dict[int, LogicalType] = {
    info.oid: kind
    for name, kind in BY_TYPE_NAME.items()
    if (info := psycopg.postgres.types.get(name)) is not None
}

#: the PostgreSQL type a sink column gets; also the COPY type of its values
PG_TYPE: dict[LogicalType, str] = {
    T.INTEGER: "int4",
    T.BIGINT: "int8",
    T.FLOAT: "float8",
    T.DECIMAL: "numeric",
    T.TEXT: "text",
    T.BOOLEAN: "bool",
    T.DATE: "date",
    T.TIMESTAMP: "timestamp",
    T.TIMESTAMPTZ: "timestamptz",
    T.BYTES: "bytea",
    T.JSON: "jsonb",
}


COPY_OID: dict[LogicalType, int] = {kind: psycopg.postgres.types[name].oid for kind, name in PG_TYPE.items()}
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1


def declared_type(column: Column) -> str:
    if column.type is T.DECIMAL:
        return f"NUMERIC({column.precision},{column.scale or 0})" if column.precision else "NUMERIC"
    return {
        T.INTEGER: "INTEGER",
        T.BIGINT: "BIGINT",
        T.FLOAT: "DOUBLE PRECISION",
        T.TEXT: "TEXT",
        T.BOOLEAN: "BOOLEAN",
        T.DATE: "DATE",
        T.TIMESTAMP: "TIMESTAMP",
        T.TIMESTAMPTZ: "TIMESTAMPTZ",
        T.BYTES: "BYTEA",
        T.JSON: "JSONB",
    }[column.type]
