"""Connector kinds → implementations, imported only when used (drivers are optional extras)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from workers.movement.errors import MovementError
from workers.movement.interface import Sink, Source

# kind: (module, source class, sink class or None for source-only kinds, pip extra for its driver)
CONNECTORS: dict[str, tuple[str, str, str | None, str | None]] = {
    "sqlite": ("workers.movement.connectors.sqlite", "SqliteSource", "SqliteSink", None),
    "postgres": ("workers.movement.connectors.postgres", "PostgresSource", "PostgresSink", "postgres"),
    "mysql": ("workers.movement.connectors.mysql", "MysqlSource", "MysqlSink", "mysql"),
    "csv": ("workers.movement.connectors.csv_files", "CsvSource", None, None),
    "jsonl": ("workers.movement.connectors.jsonl_files", "JsonlSource", None, None),
}


def _load(kind: str, role: str) -> Any:
    try:
        module_name, source_class, sink_class, extra = CONNECTORS[kind]
    except KeyError:
        raise MovementError(f"unknown connector kind {kind!r}") from None
    class_name = source_class if role == "source" else sink_class
    if class_name is None:
        raise MovementError(f"connector kind {kind!r} cannot be a {role}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (install it with: pip install 'mycelial-control-plane[{extra}]')" if extra else ""
        raise MovementError(
            f"connector kind {kind!r} needs a driver that is not installed: {exc.name}{hint}"
        ) from None
    return getattr(module, class_name)


def make_source(kind: str, name: str, options: dict[str, Any], *, home: Path) -> Source:
    cls: type[Source] = _load(kind, "source")
    return cls(name, options, home=home)


def make_sink(kind: str, name: str, options: dict[str, Any], *, home: Path) -> Sink:
    cls: type[Sink] = _load(kind, "sink")
    return cls(name, options, home=home)
