"""Rules on the tables pipelines read and write: reserved names, shared and circular destinations.

Tables are compared the simple, cautious way: each dot-separated part loses one layer of
quotes (``"x"``, ```x```, ``[x]``) and its case, and the connector's default schema (postgres)
or database (mysql) is filled in; a SQLite ``main.`` prefix is dropped. Two connectors are the
same database when they are the same SQLite file (paths normalized as written, not resolved on
the daemon), the same PostgreSQL DSN text, or the same MySQL host and port.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cp.config.errors import shown

#: the engine stages replace loads in ``_mycelial_stage_*`` and keeps cursors in ``_mycelial_state``
RESERVED_PREFIX = "_mycelial"
QUOTES = (('"', '"'), ("`", "`"), ("[", "]"))


@dataclass(frozen=True)
class ConnectorRef:
    """What the table rules need to know about a declared connector."""

    name: str
    kind: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class PipelineTables:
    """A pipeline's place in the file and the tables it reads and writes."""

    where: str
    name: str
    source_connector: str
    source_table: str | None
    destination_connector: str
    destination_table: str | None


def table_problems(*, connectors: Mapping[str, ConnectorRef], pipelines: list[PipelineTables]) -> list[str]:
    """Every reserved, shared or circular table among ``pipelines``, one line each."""
    problems: list[str] = []
    writers: dict[tuple[tuple[str, ...], tuple[str, ...]], PipelineTables] = {}
    for pipe in pipelines:
        for end, table in (("source", pipe.source_table), ("destination", pipe.destination_table)):
            if table is not None and is_reserved(table):
                problems.append(
                    f"{pipe.where}.{end}.table: {shown(table)} starts with the reserved prefix "
                    f"{RESERVED_PREFIX} (the engine's own staging and state tables)"
                )
        destination = connectors.get(pipe.destination_connector)
        if destination is None or not pipe.destination_table:
            continue  # reported elsewhere
        target = (connector_key(destination), table_key(destination, pipe.destination_table))
        source = connectors.get(pipe.source_connector)
        if source is not None and pipe.source_table is not None:
            if (connector_key(source), table_key(source, pipe.source_table)) == target:
                problems.append(
                    f"{pipe.where}.destination: table {shown(pipe.destination_table)} of connector "
                    f"{shown(destination.name)} is the pipeline's own source"
                )
                continue
        earlier = writers.setdefault(target, pipe)
        if earlier is not pipe:
            problems.append(
                f"{pipe.where}.destination: table {shown(pipe.destination_table)} of connector "
                f"{shown(destination.name)} is already written by pipeline {shown(earlier.name)} "
                f"({earlier.where}); one table takes one pipeline"
            )
    return problems


def is_reserved(table: str) -> bool:
    """Whether any part of ``table`` (schema too) starts with the reserved prefix, in any case."""
    return any(part.startswith(RESERVED_PREFIX) for part in table_parts(table))


def table_parts(table: str) -> list[str]:
    """The dot-separated parts of ``table``, unquoted once and case-folded."""
    parts = []
    for part in table.split("."):
        part = part.strip()
        for opening, closing in QUOTES:
            if len(part) >= 2 and part.startswith(opening) and part.endswith(closing):
                part = part[1:-1]
                break
        parts.append(part.casefold())
    return parts


def table_key(connector: ConnectorRef, table: str) -> tuple[str, ...]:
    """``table`` as the connector's kind resolves it: schema or database filled in."""
    parts = table_parts(table)
    if connector.kind == "postgres":  # the last dot separates the schema, as the engine splits it
        schema = str(connector.options.get("schema") or "public").casefold()
        return (".".join(parts[:-1]) if len(parts) > 1 else schema, parts[-1])
    if connector.kind == "mysql":  # the first dot separates the database
        database = str(connector.options.get("database") or "").casefold()
        return (parts[0], ".".join(parts[1:])) if len(parts) > 1 else (database, parts[0])
    if connector.kind == "sqlite" and len(parts) > 1 and parts[0] == "main":
        return (".".join(parts[1:]),)
    return (".".join(parts),)


def connector_key(connector: ConnectorRef) -> tuple[str, ...]:
    """What makes two connectors the same database, as far as the file can tell."""
    options = connector.options
    if connector.kind in {"sqlite", "csv", "jsonl"} and options.get("path"):
        # normpath keeps a leading "//" (POSIX leaves its meaning open); Linux reads it as "/"
        return ("file", os.path.normpath(str(options["path"])).replace("//", "/", 1))
    if connector.kind == "postgres" and options.get("dsn"):
        return ("postgres", str(options["dsn"]).strip())
    if connector.kind == "mysql":
        host = str(options.get("host") or "127.0.0.1").casefold()
        return ("mysql", host, str(options.get("port") or 3306))
    return ("connector", connector.name)
