"""Settings, connections and driver errors for the MySQL/MariaDB connector (``mysql.py``).

Options are the keys the control plane validates for ``kind: mysql``: ``host`` (default
127.0.0.1), ``port`` (3306), ``user`` (root), ``password`` (a ``${env:NAME}`` or
``${file:/path}`` reference, resolved at ``open()``; references work in the other keys too),
and ``database`` (required). There is no URL form: one scheme, the same keys the configuration
file takes. Connecting gives up after ``CONNECT_TIMEOUT`` seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pymysql
import pymysql.cursors

from workers.movement.errors import MovementError, RetryableError
from workers.scrub import scrub
from workers.secrets import SecretError, remember, resolve

Connection: TypeAlias = "pymysql.connections.Connection[pymysql.cursors.Cursor]"

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    def scrub(self, text: str) -> str:
        """A message without the password in any form, should a server or driver ever echo it."""
        return scrub(text, secrets=[self.password])


def settings(options: dict[str, Any], where: str) -> Settings:
    try:
        values = {
            key: resolve(str(options.get(key) if options.get(key) is not None else default))
            for key, default in (
                ("host", "127.0.0.1"),
                ("port", 3306),
                ("user", "root"),
                ("password", ""),
                ("database", ""),
            )
        }
    except SecretError as exc:
        raise MovementError(f"{where}: {exc}") from None
    if not values["database"]:
        raise MovementError(f"{where}: option 'database' is required")
    try:
        port = int(values["port"])
    except ValueError:
        raise MovementError(f"{where}: option 'port' must be a number, not {values['port']!r}") from None
    remember([values["password"]])  # a literal one too: it may be echoed in any later error
    return Settings(values["host"], port, values["user"], values["password"], values["database"])


# Errors after which the same attempt later can succeed: the server is away, busy, or chose this
# transaction as a deadlock victim. Everything else (bad SQL, a missing table, a denied privilege,
# a value that does not fit) needs a person.
_RETRYABLE_CODES = {1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055}
# Connection failures that trying again will not fix: wrong credentials or database.
_FATAL_CONNECT_CODES = {1044, 1045, 1049, 1251, 1698, 2059}


def _code(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = exc.args
    return args[0] if args and isinstance(args[0], int) else None


def _reason(exc: BaseException) -> str:
    args: tuple[Any, ...] = exc.args
    text = (str(args[1]) if len(args) >= 2 else str(exc)) or "the connection was lost"
    # "Can't connect to MySQL server on 'h' ([Errno 111] Connection refused)" -> the part in brackets
    match = re.match(r"^Can't connect to MySQL server on .*? \((.*)\)$", text)
    return match.group(1) if match else text


def connect(config: Settings, where: str, *, conv: dict[Any, Any] | None = None) -> Connection:
    try:
        conn: Connection = pymysql.connect(
            host=config.host,
            port=config.port,
            user=config.user,
            password=config.password,
            database=config.database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            conv=conv,
        )
    except pymysql.MySQLError as exc:
        message = config.scrub(
            f"{where}: cannot connect to MySQL at {config.host}:{config.port}: {_reason(exc)}"
        )
        if _code(exc) in _FATAL_CONNECT_CODES:
            raise MovementError(message) from None
        raise RetryableError(message) from None
    except UnicodeEncodeError:
        # PyMySQL sends the password as Latin-1; its error would only name a position in it
        raise MovementError(
            f"{where}: cannot connect to MySQL at {config.host}:{config.port}: the password has"
            " characters outside Latin-1, which the MySQL driver cannot send"
        ) from None
    return conn


def failure(where: str, exc: BaseException, config: Settings) -> MovementError:
    """The MovementError (or RetryableError) for a driver error, naming the connector."""
    code = _code(exc)
    message = config.scrub(f"{where}: {_reason(exc)}" + (f" (MySQL error {code})" if code else ""))
    if code in _RETRYABLE_CODES or isinstance(exc, pymysql.err.InterfaceError):
        return RetryableError(message)
    return MovementError(message)


def execute(cursor: pymysql.cursors.Cursor, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> None:
    cursor.execute(sql, tuple(params))
