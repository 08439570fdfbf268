"""The connector contract: one set of typed rows every connector pair must carry unchanged.

Each connector kind has a harness (``tests/movement/harness_<kind>.py``, class ``Harness``) that
knows how to create a source table with the given logical columns and how to clean up.
"""

from __future__ import annotations

import importlib
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest

from workers.movement.types import Column, LogicalType, Row

T = LogicalType

#: every logical type, with NULL in each column in the last row
CONTRACT_COLUMNS: list[Column] = [
    Column("id", T.BIGINT, nullable=False),
    Column("small", T.INTEGER),
    Column("big", T.BIGINT),
    Column("ratio", T.FLOAT),
    Column("price", T.DECIMAL, precision=18, scale=4),
    Column("label", T.TEXT),
    Column("active", T.BOOLEAN),
    Column("day", T.DATE),
    Column("seen_at", T.TIMESTAMP),
    Column("seen_at_tz", T.TIMESTAMPTZ),
    Column("blob", T.BYTES),
    Column("doc", T.JSON),
]

CONTRACT_ROWS: list[Row] = [
    (
        1,
        2147483647,
        9223372036854775807,
        0.5,
        Decimal("12345678901234.5678"),
        "plain",
        True,
        date(2024, 2, 29),
        datetime(2024, 2, 29, 23, 59, 59, 123456),  # noqa: DTZ001 - TIMESTAMP is naive
        datetime(2024, 2, 29, 23, 59, 59, 654321, tzinfo=UTC),
        b"\x00\x01\xff",
        {"a": [1, 2, {"b": None}]},
    ),
    (
        2,
        -2147483648,
        -9223372036854775808,
        -1.25e-10,
        Decimal("-0.0001"),
        "Grüße, 東京, emoji 🍄, quote ' \" and \\",
        False,
        date(1970, 1, 1),
        datetime(1999, 12, 31, 0, 0, 0),  # noqa: DTZ001
        datetime(2026, 3, 29, 1, 30, 0, tzinfo=UTC),
        b"",
        ["x", 1, True],
    ),
    (3, None, None, None, None, None, None, None, None, None, None, None),
]

SOURCE_KINDS = ["sqlite", "postgres", "mysql", "csv", "jsonl"]
SINK_KINDS = ["sqlite", "postgres", "mysql"]


class Harness(Protocol):
    kind: str

    def options(self) -> dict[str, Any]:
        """Connector options for the engine (kind-specific)."""

    def create_table(
        self, table: str, columns: list[Column], rows: list[Row], *, primary_key: list[str]
    ) -> str:
        """Create ``table`` holding ``rows``; return the source ``table`` name to read."""

    def cleanup(self) -> None: ...


def load_harness(kind: str, tmp_path: Path) -> Harness:
    try:
        module = importlib.import_module(f"tests.movement.harness_{kind}")
    except ModuleNotFoundError:
        pytest.skip(f"no contract harness for {kind} yet")
    harness: Harness = module.Harness(tmp_path)
    return harness
