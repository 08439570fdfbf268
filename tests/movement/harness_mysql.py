"""MySQL/MariaDB contract harness, on the machine's server.

``MYCELIAL_TEST_MYSQL_URL`` (default ``mysql://root@127.0.0.1:3306/test``) says where. Each harness
works in a database of its own, created here and dropped by ``cleanup()``, so that it also drops
what a sink made there (tables, staging tables, ``_mycelial_state``) and concurrent test runs on
the same server never touch each other's tables. A user who may not create databases gets the
configured one, and ``cleanup()`` then drops only the tables that ``create_table`` made.
Without a reachable server the test is skipped, or fails when ``CI`` is set.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from workers.movement.connectors.mysql_types import converter, declared_type, quote, to_mysql
from workers.movement.types import Column, LogicalType, Row, Schema

DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def server_options() -> dict[str, Any]:
    url = urlsplit(os.environ.get("MYCELIAL_TEST_MYSQL_URL", DEFAULT_URL))
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 3306,
        "user": unquote(url.username or "root"),
        "password": unquote(url.password or ""),
        "database": url.path.lstrip("/") or "test",
    }


def connect(options: dict[str, Any]) -> Any:
    import pymysql

    return pymysql.connect(
        host=options["host"],
        port=options["port"],
        user=options["user"],
        password=options["password"],
        database=options["database"],
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=3,
        init_command="SET time_zone = '+00:00'",  # TIMESTAMP values are written as UTC
    )


def source_type(column: Column) -> str:
    """What a person's MySQL table would use; timestamptz as a native TIMESTAMP (1970-2038)."""
    if column.type is LogicalType.TIMESTAMPTZ:
        return "TIMESTAMP(6) NULL DEFAULT NULL"
    if column.type in (LogicalType.TEXT, LogicalType.BYTES) and not column.nullable:
        return "VARCHAR(255)" if column.type is LogicalType.TEXT else "VARBINARY(255)"
    return declared_type(column)


class Harness:
    kind = "mysql"

    def __init__(self, tmp_path: Path) -> None:
        self._options = server_options()
        try:
            self.conn = connect(self._options)
        except Exception as exc:  # any failure means "no server here"
            where = f"MySQL at {self._options['host']}:{self._options['port']}"
            if IN_CI:
                pytest.fail(f"{where} is required in CI: {exc}")
            pytest.skip(f"{where} is not available: {exc}")
        self.created: list[str] = []
        self.own_database: str | None = None
        self._ready = False

    def _use_own_database(self) -> None:
        """Made on first use, so that a test skipped before it starts leaves nothing behind."""
        if self._ready:
            return
        self._ready = True
        name = f"mycelial_test_{uuid.uuid4().hex[:12]}"
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {quote(name)} CHARACTER SET utf8mb4", ())
                cursor.execute(f"USE {quote(name)}", ())
        except Exception:  # no privilege: share the configured database
            return
        self.own_database = self._options["database"] = name

    def options(self) -> dict[str, Any]:
        self._use_own_database()
        return dict(self._options)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self._use_own_database()
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def tables(self) -> set[str]:
        return {r[0] for r in self.execute("SHOW TABLES")}

    def create_table(
        self, table: str, columns: list[Column], rows: list[Row], *, primary_key: list[str]
    ) -> str:
        defs = [f"{quote(c.name)} {source_type(c)}" for c in columns]
        if primary_key:
            defs.append(f"PRIMARY KEY ({', '.join(quote(k) for k in primary_key)})")
        self.execute(f"DROP TABLE IF EXISTS {quote(table)}")
        self.execute(f"CREATE TABLE {quote(table)} ({', '.join(defs)}) ENGINE=InnoDB CHARSET=utf8mb4")
        self.created.append(table)
        self.insert(table, columns, rows)
        return table

    def insert(self, table: str, columns: list[Column], rows: list[Row]) -> None:
        self._use_own_database()
        if not rows:
            return
        convert = converter(Schema(tuple(columns)), to_mysql)
        names = ", ".join(quote(c.name) for c in columns)
        marks = ", ".join("%s" for _ in columns)
        with self.conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {quote(table)} ({names}) VALUES ({marks})", [convert(r) for r in rows]
            )

    def cleanup(self) -> None:
        if self.own_database:
            self.execute(f"DROP DATABASE IF EXISTS {quote(self.own_database)}")
        else:
            for table in self.created:
                self.execute(f"DROP TABLE IF EXISTS {quote(table)}")
        self.conn.close()
