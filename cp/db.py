"""Engine and schema set-up for SQLite (default, WAL) and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from cp import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from cp.alerts import outbox  # noqa: F401  (the notification outbox tables)
from cp.private_files import make_dirs, open_private, tighten


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite files get WAL mode and a busy timeout for concurrent processes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            private_sqlite_file(Path(parsed.database))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite starts transactions lazily, which breaks SAVEPOINT semantics; take BEGIN over
        # (SQLAlchemy's documented recipe) so a rolled-back session undoes its savepoints too.
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads, then writes,
        # fails at once with SQLITE_BUSY when another process wrote in between (busy_timeout
        # does not help there), while IMMEDIATE simply waits its turn.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it: SQLite gives its WAL, shared-memory
    and journal files the database file's mode. One an older release left looser is tightened,
    companions included; missing folders are made 0700 (existing ones are the operator's)."""
    make_dirs(path.parent)
    os.close(open_private(path, os.O_RDWR))
    for suffix in SQLITE_COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            tighten(path.with_name(path.name + suffix))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    dbapi_connection.isolation_level = None


SCHEMA_LOCK_ID = 0x6D7963656C69616C  # "mycelial": serializes schema creation across processes


DISPATCH_LOCK_ID = 0x6D7963656C646973  # "myceldis": dispatch decisions take turns on it


def take_dispatch_turn(session: Session) -> None:
    """Wait for other transactions that queue runs to commit, until this one ends.

    Queueing reads a pipeline's active runs, then claims a run: two transactions at once could
    both see room. SQLite's BEGIN IMMEDIATE already makes them take turns; on PostgreSQL a
    transaction-scoped advisory lock does.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": DISPATCH_LOCK_ID})


def create_schema(engine: Engine) -> None:
    """Create missing tables; safe when several processes start at once.

    Migrations take over after the first release.
    """
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
            SQLModel.metadata.create_all(conn)
        return
    for attempt in range(5):
        try:
            SQLModel.metadata.create_all(engine)
            return
        except OperationalError:
            # another process created a table between our check and our CREATE; look again
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
