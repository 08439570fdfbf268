"""Settings, connections and driver errors for the MySQL/MariaDB connector (``mysql.py``).

Options are the keys the control plane validates for ``kind: mysql``: ``host`` (default
127.0.0.1), ``port`` (3306), ``user`` (root), ``password`` (a ``${env:NAME}`` or
``${file:/path}`` reference, resolved at ``open()``; references work in the other keys too),
and ``database`` (required); TLS with ``ssl_mode`` (``preferred``: PyMySQL's default,
``disabled``, ``verify_ca``, ``verify_identity``) and the daemon's files ``ssl_ca``, ``ssl_cert``,
``ssl_key`` (cp/tls/database.py). There is no URL form: one scheme, the same keys the
configuration file takes. Connecting gives up after ``CONNECT_TIMEOUT`` seconds, or the
attempt's time left.

Statements get the attempt's time left as ``max_statement_time`` (MariaDB; on MySQL
``max_execution_time``, which bounds SELECTs only), ``lock_wait_timeout`` (table and metadata
locks, ``LOCK TABLES ... WRITE``) and ``innodb_lock_wait_timeout`` (row locks); the watchdog's
``KILL QUERY`` from a second connection stops whatever those leave running.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pymysql
import pymysql.cursors

from cp.tls.context import TlsConfigError, tls_failure, tls_refused
from cp.tls.database import MysqlTls
from workers.movement.deadline import Deadline
from workers.movement.errors import MovementError, RetryableError
from workers.scrub import scrub
from workers.secrets import SecretError, remember, resolve

Connection: TypeAlias = "pymysql.connections.Connection[pymysql.cursors.Cursor]"

CONNECT_TIMEOUT = 10.0
KILL_CONNECT_TIMEOUT = 5.0  # seconds the watchdog waits for the connection that sends KILL QUERY
_UNKNOWN_THREAD = 1094  # KILL of a connection that is already gone


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    tls: MysqlTls = field(default_factory=MysqlTls)

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
    tls = MysqlTls(
        mode=str(options.get("ssl_mode") or "preferred").lower(),
        ca=_text(options.get("ssl_ca")),
        cert=_text(options.get("ssl_cert")),
        key=_text(options.get("ssl_key")),
    )
    problem = tls.problem()
    if problem:
        raise MovementError(f"{where}: {problem}")
    return Settings(values["host"], port, values["user"], values["password"], values["database"], tls)


def _text(value: Any) -> str | None:
    return str(value) if value else None


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


def connect(
    config: Settings,
    where: str,
    *,
    conv: dict[Any, Any] | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> Connection:
    try:
        tls_arguments = config.tls.pymysql_arguments()
    except TlsConfigError as exc:
        raise MovementError(f"{where}: {exc}") from None
    try:
        conn: Connection = pymysql.connect(
            host=config.host,
            port=config.port,
            user=config.user,
            password=config.password,
            database=config.database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=timeout,
            conv=conv,
            **tls_arguments,
        )
    except pymysql.MySQLError as exc:
        why = tls_failure(exc) or _reason(exc)
        message = config.scrub(f"{where}: cannot connect to MySQL at {config.host}:{config.port}: {why}")
        if _code(exc) in _FATAL_CONNECT_CODES or tls_refused(exc):
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


def is_mariadb(conn: Connection) -> bool:
    return "mariadb" in str(getattr(conn, "server_version", "")).lower()  # untyped in the stubs


def timeouts(deadline: Deadline, detail: str, *, mariadb: bool) -> str | None:
    """A SET giving the session's next statements the time left; None without a limit. Raises
    TimedOutError once the deadline passed."""
    seconds = deadline.statement_seconds(detail)
    if seconds is None:
        return None
    whole = max(1, math.ceil(seconds))  # the lock waits count whole seconds
    statement = (
        f"max_statement_time = {seconds:.3f}"
        if mariadb
        else f"max_execution_time = {max(1, math.ceil(seconds * 1000))}"
    )
    return f"SET SESSION {statement}, lock_wait_timeout = {whole}, innodb_lock_wait_timeout = {whole}"


def limit(cursor: pymysql.cursors.Cursor, deadline: Deadline, detail: str, *, mariadb: bool) -> None:
    """Bound the session's next statements by the time left (one round trip; none without a limit)."""
    statement = timeouts(deadline, detail, mariadb=mariadb)
    if statement is not None:
        execute(cursor, statement)


def kill_query(config: Settings, conn: Connection | None, where: str) -> None:
    """Stop the statement running on ``conn`` with ``KILL QUERY`` from a second connection (called
    from the watchdog's thread); the connection itself stays usable, for the rollback."""
    if conn is None or not conn.open:
        return
    thread_id = int(conn.thread_id())  # type: ignore[no-untyped-call]  # untyped in the stubs
    killer = connect(config, where, timeout=KILL_CONNECT_TIMEOUT)
    try:
        with killer.cursor() as cursor:
            execute(cursor, f"KILL QUERY {thread_id}")
    except pymysql.MySQLError as exc:
        if _code(exc) != _UNKNOWN_THREAD:
            raise failure(where, exc, config) from None
    finally:
        killer.close()


def execute(cursor: pymysql.cursors.Cursor, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> None:
    cursor.execute(sql, tuple(params))
