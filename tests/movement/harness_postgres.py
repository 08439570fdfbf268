from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from workers.movement.connectors.postgres_types import declared_type
from workers.movement.sqlbuild import quote
from workers.movement.types import Column, LogicalType, Row

SERVER_URL = os.environ.get("MYCELIAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


class Harness:
    """A fresh schema per instance on the test server, dropped with everything in it by ``cleanup``."""

    kind = "postgres"

    def __init__(self, tmp_path: Path) -> None:
        self.url = SERVER_URL
        self.schema = f"mycelial_t_{uuid.uuid4().hex[:10]}"
        self.created = False
        try:
            with psycopg.connect(self.url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            problem = str(exc).splitlines()[0]
            if IN_CI:
                pytest.fail(f"PostgreSQL at {self.url} is required in CI: {problem}")
            pytest.skip(f"PostgreSQL not available at {self.url}: {problem}")

    def _ensure_schema(self) -> None:
        # created on first use, not in __init__: a test may skip between loading and its cleanup
        if not self.created:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {quote(self.schema)}")
            self.created = True

    def options(self) -> dict[str, Any]:
        self._ensure_schema()
        return {"dsn": self.url, "schema": self.schema}

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        self._ensure_schema()
        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute(f"SET search_path TO {quote(self.schema)}, public")
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def execute(self, statement: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def create_table(
        self, table: str, columns: list[Column], rows: list[Row], *, primary_key: list[str]
    ) -> str:
        defs = [f"{quote(c.name)} {declared_type(c)}" for c in columns]
        if primary_key:
            defs.append(f"PRIMARY KEY ({', '.join(quote(k) for k in primary_key)})")
        json_indexes = [i for i, c in enumerate(columns) if c.type is LogicalType.JSON]
        with self.connect() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {quote(table)}")
            conn.execute(f"CREATE TABLE {quote(table)} ({', '.join(defs)})")
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {quote(table)} VALUES ({', '.join('%s' for _ in columns)})",
                    [
                        tuple(Jsonb(v) if i in json_indexes and v is not None else v for i, v in enumerate(r))
                        for r in rows
                    ],
                )
        return table

    def cleanup(self) -> None:
        if not self.created:
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {quote(self.schema)} CASCADE")
