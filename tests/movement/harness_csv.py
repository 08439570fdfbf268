"""Contract harness for CSV sources: each table is one ``<table>.csv`` in a folder of its own."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Any

from workers.movement.types import Column, LogicalType, Row

T = LogicalType


def column_type(column: Column) -> str:
    """The ``columns`` option's type name for ``column``, with a decimal's precision and scale."""
    if column.type is T.DECIMAL and column.precision is not None:
        return f"decimal({column.precision},{column.scale or 0})"
    return column.type.value


def as_text(value: Any) -> str:
    """A typed value as the files carry it: ISO dates, base64 bytes, JSON text, exact numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def csv_field(value: Any) -> str:
    """NULL as an empty unquoted field; a value quoted when it needs it, and always when empty."""
    if value is None:
        return ""
    text = as_text(value)
    if text == "" or any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


class Harness:
    kind = "csv"

    def __init__(self, tmp_path: Path) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.root = tmp_path
        self.folder: Path | None = None
        self.columns: dict[str, str] = {}

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"path": str(self.folder or self.root)}
        if self.columns:
            options["columns"] = dict(self.columns)
        return options

    def create_table(
        self, table: str, columns: list[Column], rows: list[Row], *, primary_key: list[str]
    ) -> str:
        self.folder = self.root / table
        self.folder.mkdir(parents=True, exist_ok=True)
        self.columns = {c.name: column_type(c) for c in columns}
        lines = [",".join(csv_field(c.name) for c in columns)]
        lines += [",".join(csv_field(v) for v in row) for row in rows]
        (self.folder / f"{table}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return table

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
