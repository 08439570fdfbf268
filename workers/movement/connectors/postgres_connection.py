"""Connections and driver errors for the PostgreSQL connector (``postgres.py``): an autocommit
session in UTC with the configured schema first on the search path, statement and lock timeouts
from the attempt's time left, a cancel for the watchdog, and error messages that never carry the
DSN or its password."""

from __future__ import annotations

import math
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cp.tls.context import tls_refused
from workers.movement.deadline import NO_DEADLINE, Deadline
from workers.movement.errors import MovementError, RetryableError
from workers.scrub import dsn_secrets, scrub
from workers.secrets import remember, resolve

Connection = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT = 10  # seconds; libpq would otherwise wait forever on a silent host
MIN_CONNECT_TIMEOUT = 2  # libpq takes whole seconds and treats 1 as 2
CANCEL_TIMEOUT = 5.0  # seconds the watchdog's cancel request may take
# A statement's own timeout ends a moment after the lock wait's (both at or past the deadline), so
# that the error says "lock timeout" when a lock was what the statement waited on.
LOCK_MARGIN_MS = 250


def secrets_of(dsn: str) -> list[str]:
    """Every password the DSN carries, remembered for the daemon's scrubbing; the DSN's other parts
    (host, user, database) are not secrets, and scrubbing masks any DSN's credentials anyway."""
    found = dsn_secrets(dsn)
    try:
        found.add(str(conninfo_to_dict(dsn).get("password") or ""))
    except psycopg.Error:
        pass  # malformed: dsn_secrets already took what the patterns could find
    values = sorted((s for s in found if s), key=len, reverse=True)
    remember(values)
    return values


def redact(text: str, secrets: list[str]) -> str:
    return scrub(text, secrets=secrets)


def reason(exc: BaseException, secrets: list[str]) -> str:
    """The operator-facing part of a driver error: its first line(s), never the DSN or password."""
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    text = primary or " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    context = (diag.context or "") if diag is not None else ""
    if primary and context.startswith("COPY "):
        # "COPY dest, line 3, column amount: "x"": which column, and which row of the batch
        text += f" ({context.splitlines()[0]})"
    return redact(text or type(exc).__name__, secrets)


def failure(where: str, exc: psycopg.Error, secrets: list[str]) -> MovementError:
    """Connection-level errors (lost connection, shutdown, timeouts, serialization) are retryable."""
    cls = RetryableError if isinstance(exc, psycopg.OperationalError) else MovementError
    return cls(f"{where}: {reason(exc, secrets)}")


def connect(
    options: dict[str, Any], where: str, *, deadline: Deadline = NO_DEADLINE
) -> tuple[Connection, list[str]]:
    """An autocommit session in UTC with the configured schema first on the search path; connecting
    gives up within the time left."""
    dsn = resolve(str(options["dsn"]))
    secrets = secrets_of(dsn)
    try:
        given = conninfo_to_dict(dsn)
        wait = max(MIN_CONNECT_TIMEOUT, math.ceil(deadline.bound(CONNECT_TIMEOUT)))
        extra: dict[str, Any] = {} if "connect_timeout" in given else {"connect_timeout": wait}
        conn = psycopg.connect(dsn, autocommit=True, fallback_application_name="mycelial", **extra)
    except psycopg.OperationalError as exc:
        message = f"{where}: cannot connect to PostgreSQL: {reason(exc, secrets)}"
        # a refused certificate or a server without TLS stays so: the run fails without retries
        raise (MovementError if tls_refused(exc) else RetryableError)(message) from None
    except psycopg.Error as exc:
        raise MovementError(
            f"{where}: invalid PostgreSQL connection string: {reason(exc, secrets)}"
        ) from None
    try:
        conn.execute("SET TIME ZONE 'UTC'")
        schema = schema_option(options)
        if schema != "public":
            conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
    except psycopg.Error as exc:
        conn.close()
        raise failure(where, exc, secrets) from None
    return conn, secrets


def timeouts(deadline: Deadline, detail: str, *, local: bool = False) -> str | None:
    """SET statements that give the next statements the time left (``local``: to the end of the
    transaction); None without a limit. Raises TimedOutError once the deadline passed."""
    ms = deadline.statement_ms(detail)
    if ms is None:
        return None
    scope = "LOCAL " if local else ""
    return f"SET {scope}statement_timeout = {ms + LOCK_MARGIN_MS}; SET {scope}lock_timeout = {ms}"


def limit(conn: Connection, deadline: Deadline, detail: str) -> None:
    """Bound the session's next statements by the time left (one round trip; none without a limit)."""
    statements = timeouts(deadline, detail)
    if statements is not None:
        conn.execute(statements)


def cancel(conn: Connection | None) -> None:
    """Cancel the statement running on ``conn``, from another thread; nothing if it is idle or gone."""
    if conn is not None and not conn.closed:
        conn.cancel_safe(timeout=CANCEL_TIMEOUT)


def schema_option(options: dict[str, Any]) -> str:
    return str(options.get("schema") or "public")
