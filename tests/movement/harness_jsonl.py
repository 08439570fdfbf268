"""Contract harness for JSON-lines sources: each table is one ``<table>.jsonl`` in a folder of its own."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.movement.harness_csv import as_text, column_type
from workers.movement.types import Column, Row


def json_value(value: Any) -> str:
    """A typed value as JSON text; decimals as exact JSON numbers, the rest as the CSV harness writes."""
    if value is None or isinstance(value, bool | int | float | str | dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(as_text(value))


class Harness:
    kind = "jsonl"

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
        lines = [
            "{"
            + ", ".join(f"{json.dumps(c.name)}: {json_value(v)}" for c, v in zip(columns, row, strict=True))
            + "}"
            for row in rows
        ]
        (self.folder / f"{table}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return table

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
