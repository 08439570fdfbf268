"""First-cut data movement: copy a SQLite table or query into another SQLite database in batches.

``replace`` loads a staging table and swaps it in one transaction, so a failure leaves the old
table untouched; ``append`` inserts batch by batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cp.protocol import PipelineSpec
from workers.secrets import resolve


class JobError(RuntimeError):
    """A run failure with a message fit to show an operator (no secrets)."""


@dataclass(frozen=True)
class CopyResult:
    rows_read: int
    rows_written: int


Progress = Callable[[int, int], None]


def sqlite_path(options: dict[str, object], home: Path) -> Path:
    raw = resolve(str(options["path"]))
    path = Path(raw).expanduser()
    return path if path.is_absolute() else home / path


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def copy_pipeline(
    spec: PipelineSpec, *, home: Path, on_progress: Progress, should_stop: Callable[[], bool]
) -> CopyResult:
    for end in (spec.source, spec.destination):
        if end.kind != "sqlite":
            raise JobError(f"connector {end.name}: kind {end.kind!r} is not supported by this daemon yet")
    src_path = sqlite_path(spec.source.options, home)
    if not src_path.exists():
        raise JobError(f"source {spec.source.name}: database file {src_path} does not exist")
    dst_path = sqlite_path(spec.destination.options, home)
    dst_path.parent.mkdir(parents=True, exist_ok=True)

    src = sqlite3.connect(f"{src_path.resolve().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(dst_path, isolation_level=None)
    try:
        dst.execute("PRAGMA busy_timeout=30000")
        try:
            cursor = src.execute(_source_sql(spec))
        except sqlite3.Error as exc:
            raise JobError(f"source {spec.source.name}: {exc}") from None
        columns = [d[0] for d in cursor.description]
        types = _declared_types(src, spec.source_table, columns)
        target = spec.destination_table
        table = f"_mycelial_stage_{target}" if spec.mode == "replace" else target
        column_defs = ", ".join(f"{quote(c)} {types.get(c, '')}".strip() for c in columns)
        placeholders = ", ".join("?" for _ in columns)
        insert = (
            f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in columns)}) VALUES ({placeholders})"
        )
        try:
            if spec.mode == "replace":
                dst.execute(f"DROP TABLE IF EXISTS {quote(table)}")
            dst.execute(f"CREATE TABLE IF NOT EXISTS {quote(table)} ({column_defs})")
        except sqlite3.Error as exc:
            raise JobError(f"destination {spec.destination.name}: {exc}") from None

        rows = 0
        while batch := cursor.fetchmany(spec.batch_size):
            if should_stop():
                raise JobError("cancelled between batches")
            try:
                dst.execute("BEGIN")
                dst.executemany(insert, batch)
                dst.execute("COMMIT")
            except sqlite3.Error as exc:
                if dst.in_transaction:
                    dst.execute("ROLLBACK")
                raise JobError(f"destination {spec.destination.name}: {exc}") from None
            rows += len(batch)
            on_progress(rows, rows)

        if spec.mode == "replace":
            dst.execute("BEGIN IMMEDIATE")
            dst.execute(f"DROP TABLE IF EXISTS {quote(target)}")
            dst.execute(f"ALTER TABLE {quote(table)} RENAME TO {quote(target)}")
            dst.execute("COMMIT")
        return CopyResult(rows_read=rows, rows_written=rows)
    finally:
        src.close()
        dst.close()


def _source_sql(spec: PipelineSpec) -> str:
    if spec.source_query is not None:
        return spec.source_query
    assert spec.source_table is not None
    return f"SELECT * FROM {quote(spec.source_table)}"


def _declared_types(conn: sqlite3.Connection, table: str | None, columns: list[str]) -> dict[str, str]:
    if table is None:
        return {}
    return {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info({quote(table)})")}
