"""Tell a database that is briefly unavailable from a statement that fails because of its data."""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DBAPIError, DisconnectionError, TimeoutError

# SQLSTATE classes and codes of PostgreSQL that a later attempt may pass
_PG_TRANSIENT_CLASSES = frozenset(
    {
        "08",  # connection exception
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "57",  # operator intervention: admin/crash shutdown, cannot connect now, query cancelled
        "58",  # system error (I/O) outside PostgreSQL
    }
)
_PG_TRANSIENT_CODES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "55006",  # object_in_use
    }
)
# MySQL/MariaDB error numbers that a later attempt may pass
_MYSQL_TRANSIENT_CODES = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout exceeded
        1213,  # deadlock found
        2002,  # cannot connect through the socket
        2003,  # cannot connect to the server
        2006,  # server has gone away
        2013,  # lost connection during query
    }
)
_SQLITE_TRANSIENT_NAMES = frozenset(
    {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN"}
)
_SQLITE_TRANSIENT_TEXT = ("database is locked", "database table is locked", "unable to open database file")


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not do the work now, so retrying may succeed.

    A statement rejected for what it carries (value too long, out of range, index row too large,
    invalid text, constraint violated) fails the same way every time: False.
    """
    if isinstance(exc, DisconnectionError | TimeoutError):
        return True  # the connection pool gave up: nothing about the statement
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        return _sqlite_transient(orig)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None or _is_psycopg(orig):
        if sqlstate is None:
            # psycopg gives no SQLSTATE when no server answered: a connection that failed
            return True
        return sqlstate[:2] in _PG_TRANSIENT_CLASSES or sqlstate in _PG_TRANSIENT_CODES
    code = _mysql_code(orig)
    if code is not None:
        return code in _MYSQL_TRANSIENT_CODES
    return False


def _sqlite_transient(orig: sqlite3.Error) -> bool:
    name = getattr(orig, "sqlite_errorname", None)  # extended names too: SQLITE_BUSY_SNAPSHOT
    if isinstance(name, str) and "_".join(name.split("_")[:2]) in _SQLITE_TRANSIENT_NAMES:
        return True
    text = str(orig).lower()
    return any(fragment in text for fragment in _SQLITE_TRANSIENT_TEXT)


def _is_psycopg(orig: object) -> bool:
    return type(orig).__module__.split(".")[0] == "psycopg"


def _mysql_code(orig: object) -> int | None:
    if type(orig).__module__.split(".")[0] not in {"pymysql", "MySQLdb", "mysql"}:
        return None
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def describe(exc: BaseException, *, limit: int = 300) -> str:
    """One bounded line naming the driver's error, without the statement or its parameters."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    text = " ".join(str(orig).split())
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} characters)"
    return f"{type(orig).__name__}: {text}"
