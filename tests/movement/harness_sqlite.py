from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from workers.movement.connectors.sqlite import converter, declared_type, quote, to_sqlite
from workers.movement.types import Column, Row, Schema


class Harness:
    kind = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.path = tmp_path / "contract-sqlite.db"

    def options(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def create_table(
        self, table: str, columns: list[Column], rows: list[Row], *, primary_key: list[str]
    ) -> str:
        defs = [f"{quote(c.name)} {declared_type(c)}" for c in columns]
        if primary_key:
            defs.append(f"PRIMARY KEY ({', '.join(quote(k) for k in primary_key)})")
        convert = converter(Schema(tuple(columns)), to_sqlite)
        with sqlite3.connect(self.path) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {quote(table)}")
            conn.execute(f"CREATE TABLE {quote(table)} ({', '.join(defs)})")
            conn.executemany(
                f"INSERT INTO {quote(table)} VALUES ({', '.join('?' for _ in columns)})",
                [convert(r) for r in rows],
            )
        return table

    def cleanup(self) -> None:
        self.path.unlink(missing_ok=True)
