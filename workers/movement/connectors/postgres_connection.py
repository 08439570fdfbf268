"""Connections and driver errors for the PostgreSQL connector (``postgres.py``): an autocommit
session in UTC with the configured schema first on the search path, and error messages that never
carry the DSN or its password."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from workers.movement.errors import MovementError, RetryableError
from workers.scrub import dsn_secrets, scrub
from workers.secrets import remember, resolve

Connection = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT = 10  # seconds; libpq would otherwise wait forever on a silent host


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


def connect(options: dict[str, Any], where: str) -> tuple[Connection, list[str]]:
    """An autocommit session in UTC with the configured schema first on the search path."""
    dsn = resolve(str(options["dsn"]))
    secrets = secrets_of(dsn)
    try:
        given = conninfo_to_dict(dsn)
        extra: dict[str, Any] = {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT}
        conn = psycopg.connect(dsn, autocommit=True, fallback_application_name="mycelial", **extra)
    except psycopg.OperationalError as exc:
        raise RetryableError(f"{where}: cannot connect to PostgreSQL: {reason(exc, secrets)}") from None
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


def schema_option(options: dict[str, Any]) -> str:
    return str(options.get("schema") or "public")
