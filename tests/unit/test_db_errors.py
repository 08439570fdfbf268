"""Specification of the retry classifier: a briefly unavailable database is retried, bad data never."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pymysql
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, StatementError

from cp.db import make_engine
from cp.db_errors import describe, is_transient
from cp.health import REJECTED_NAME_MAX


def wrapped(orig: Exception, kind: type[DBAPIError] = OperationalError) -> DBAPIError:
    """``orig`` as SQLAlchemy raises it from a statement."""
    return kind("UPDATE daemon SET name = %(name)s", {"name": "x"}, orig)


@pytest.mark.parametrize(
    ("orig", "transient"),
    [
        (psycopg.errors.SerializationFailure("could not serialize access"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.LockNotAvailable("could not obtain lock"), True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.TooManyConnections("too many clients already"), True),
        (psycopg.errors.DiskFull("could not extend file"), True),
        (psycopg.OperationalError("connection failed: Connection refused"), True),
        (psycopg.errors.ProgramLimitExceeded("index row requires 10000016 bytes"), False),
        (psycopg.errors.StringDataRightTruncation("value too long for type character varying(63)"), False),
        (psycopg.errors.NumericValueOutOfRange("integer out of range"), False),
        (psycopg.errors.CharacterNotInRepertoire("invalid byte sequence for encoding UTF8"), False),
        (psycopg.errors.UntranslatableCharacter("unsupported Unicode escape sequence"), False),
        (pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"), True),
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), True),
        (pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"), True),
        (pymysql.err.OperationalError(1406, "Data too long for column 'name' at row 1"), False),
        (pymysql.err.OperationalError(1366, "Incorrect string value"), False),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database table is locked"), True),
        (sqlite3.OperationalError("string or blob too big"), False),
        (sqlite3.OperationalError("no such table: daemon"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_each_driver_error_is_retried_only_when_the_database_could_not_do_the_work_now(
    orig: Exception, transient: bool
) -> None:
    assert is_transient(wrapped(orig)) is transient


def test_a_connection_invalidated_under_a_statement_is_retried() -> None:
    exc = OperationalError(
        "SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True
    )

    assert is_transient(exc) is True


def test_an_integrity_error_or_a_non_database_error_is_not_retried() -> None:
    assert is_transient(wrapped(psycopg.errors.UniqueViolation("duplicate key"), IntegrityError)) is False
    assert is_transient(StatementError("bad bind", "SELECT 1", {}, ValueError("naive datetime"))) is False
    assert is_transient(ValueError("not a database error")) is False


def test_a_real_sqlite_lock_held_by_another_connection_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (v TEXT)")
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(OperationalError) as caught, engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES ('x')"))
        assert is_transient(caught.value) is True
    finally:
        holder.close()
        engine.dispose()


def test_a_real_postgresql_index_row_too_large_is_not_retried_and_is_described_briefly(
    make_database_url: Callable[[str], str],
) -> None:
    engine = make_engine(make_database_url("postgres"))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE named (name VARCHAR UNIQUE)"))
        with pytest.raises(OperationalError) as caught, engine.begin() as conn:
            conn.execute(text("INSERT INTO named VALUES (:name)"), {"name": "n" * 10_000_000})
        assert is_transient(caught.value) is False
        line = describe(caught.value)
        assert line.startswith("ProgramLimitExceeded: ") and len(line) < 400
        assert "n" * REJECTED_NAME_MAX not in line
    finally:
        engine.dispose()


def test_a_real_postgresql_server_that_is_not_there_is_retried() -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(OperationalError) as caught, engine.connect():
            pass
        assert is_transient(caught.value) is True
    finally:
        engine.dispose()
