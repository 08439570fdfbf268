"""A SQLite destination that takes its time: for tests that must catch a copy mid-way."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def make_slow_destination(path: Path, table: str = "orders") -> None:
    """``table`` (id, name) with a trigger that makes every inserted row cost a join of 40,000
    steps (about 0.4 ms here): a copy then takes seconds on any machine, slower under load as the
    test's own steps are, so it can be caught mid-way without racing it."""
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.execute("CREATE TABLE slow_pad (x INTEGER)")
        conn.executemany("INSERT INTO slow_pad VALUES (?)", ((i,) for i in range(200)))
        conn.execute(
            f"CREATE TRIGGER {table}_slow AFTER INSERT ON {table} "
            "BEGIN SELECT count(*) FROM slow_pad a, slow_pad b; END"
        )
    conn.close()
