"""Connector kinds known to the control plane, with the options each one takes.

Options are validated at apply time; the daemon resolves ``${env:NAME}`` / ``${file:/path}``
references at run time, so a password never sits in the configuration, a message or a log line.
"""

from __future__ import annotations

import itertools
import re
from typing import ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cp.tls.database import MysqlTls, postgres_tls_problem

REFERENCE_HELP = "${env:NAME} or ${file:/path}"
_REFERENCE = re.compile(r"\$\{(env|file):[^}]+\}")
_MARKER = "MYCELIALSECRETREFERENCE"  # stands in for a reference while a DSN is parsed
_MARKED = re.compile(rf"^(?:{_MARKER}\d+)+$")
_PASSWORD_KEYS = frozenset({"password", "sslpassword"})
# scheme://user:password@ — greedy to the token's last "@", as a driver may read an unencoded one
_URL_USERINFO_PASSWORD = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:(\S*)@")
_KEYWORD_VALUE = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)""")
_COLUMN_TYPE = re.compile(
    r"^(integer|bigint|float|decimal(\(\d+\s*(,\s*\d+)?\))?|text|boolean|date|timestamp|timestamptz|bytes|json)$"
)


def _literal(what: str) -> ValueError:
    return ValueError(f"{what} must be a secret reference ({REFERENCE_HELP}), not a literal")


def _require_reference(value: str, what: str) -> None:
    if not _REFERENCE.fullmatch(value):
        raise _literal(what)


def _is_reference(value: str) -> bool:
    return bool(_MARKED.match(value))


def _url_passwords(marked: str) -> list[str]:
    """Every password a URL form can carry: userinfo (however a parser splits it) and the
    ``password``/``sslpassword`` query parameters, repeated ones included."""
    found = [unquote(m.group(1)) for m in _URL_USERINFO_PASSWORD.finditer(marked)]
    try:
        parts = urlsplit(marked)
        if parts.password is not None:
            found.append(unquote(parts.password))
        query = parts.query
    except ValueError:
        query = marked.partition("?")[2]
    found += [v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() in _PASSWORD_KEYS]
    return found


def _keyword_passwords(marked: str) -> list[str] | None:
    """The password values of a libpq ``key=value`` string, or None when it does not parse."""
    found: list[str] = []
    position = 0
    while position < len(marked.rstrip()):
        match = _KEYWORD_VALUE.match(marked, position)
        if not match or match.end() == position:
            return None
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if key.lower() in _PASSWORD_KEYS:
            found.append(value)
        position = match.end()
    return found


def literal_password_problem(text: str, *, what: str) -> str | None:
    """Why ``text`` (a DSN in any form, or any option) holds a literal password, or None."""
    numbers = itertools.count()
    marked = _REFERENCE.sub(lambda _: f"{_MARKER}{next(numbers)}", text)
    passwords = _url_passwords(marked) if "://" in marked else []
    if "://" not in marked and "=" in marked:
        keyword = _keyword_passwords(marked)
        if keyword is None and re.search(r"(?i)password\s*=", marked):
            return f"{what} does not parse as key=value pairs, and it names a password"
        passwords += keyword or []
    if any(p and not _is_reference(p) for p in passwords):
        return str(_literal(f"the password in {what}"))
    return None


def static_path_problem(value: str) -> str | None:
    """Why a file path is refused before any daemon sees it, or None.

    Whether an absolute path is inside a daemon's allowed roots only that daemon can tell (it alone
    knows its roots and its links); what is wrong whatever the daemon, is refused here.
    """
    if "\x00" in value:
        return "a path must not contain a NUL byte"
    if not value.startswith("/"):
        return (
            f"{value!r} is not an absolute path; write the full path on the daemon (file connectors"
            " stay under the daemon's allowed roots, its data folder by default)"
        )
    if ".." in value.split("/"):
        return f"{value!r} has a '..' segment; write the path without it"
    return None


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: the options where a ``${env:..}``/``${file:..}`` reference is allowed; nowhere else
    secret_options: ClassVar[frozenset[str]] = frozenset()
    #: the options that name a file or folder on the daemon, kept under its allowed roots
    path_options: ClassVar[frozenset[str]] = frozenset()


class SqliteOptions(_Options):
    """A SQLite database file: an absolute path on the daemon, under its allowed roots."""

    path_options: ClassVar[frozenset[str]] = frozenset({"path"})
    path: str = Field(min_length=1)


class PostgresOptions(_Options):
    """``dsn``: a libpq URL or key=value string; its password, if any, as a secret reference."""

    secret_options: ClassVar[frozenset[str]] = frozenset({"dsn"})
    dsn: str = Field(min_length=1)
    schema_: str = Field(default="public", alias="schema")

    @field_validator("dsn")
    @classmethod
    def _no_literal_password(cls, value: str) -> str:
        problem = literal_password_problem(value, what="dsn") or postgres_tls_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class MysqlOptions(_Options):
    secret_options: ClassVar[frozenset[str]] = frozenset({"password"})
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password: str | None = None
    database: str = Field(min_length=1)
    # TLS (cp/tls/database.py): files are paths on the daemon; verify_* without ssl_ca uses the
    # daemon's system trust store
    ssl_ca: str | None = Field(default=None, min_length=1)
    ssl_cert: str | None = Field(default=None, min_length=1)
    ssl_key: str | None = Field(default=None, min_length=1)
    ssl_mode: str = Field(default="preferred", validate_default=True)

    @field_validator("ssl_mode")
    @classmethod
    def _verified_tls(cls, value: str, info: ValidationInfo) -> str:
        tls = MysqlTls(
            mode=value.lower(),
            ca=info.data.get("ssl_ca"),
            cert=info.data.get("ssl_cert"),
            key=info.data.get("ssl_key"),
        )
        problem = tls.problem()
        if problem:
            raise ValueError(problem)
        return tls.mode

    @field_validator("password")
    @classmethod
    def _password_is_reference(cls, value: str | None) -> str | None:
        if value:
            _require_reference(value, "password")
        return value


class _FileOptions(_Options):
    path_options: ClassVar[frozenset[str]] = frozenset({"path"})
    path: str = Field(min_length=1)
    pattern: str | None = None
    columns: dict[str, str] | None = None

    @field_validator("columns")
    @classmethod
    def _known_types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column, kind in (value or {}).items():
            if not _COLUMN_TYPE.match(kind.strip().lower()):
                raise ValueError(f"column {column!r}: unknown type {kind!r}")
        return value


class CsvOptions(_FileOptions):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    header: bool = True
    null: str | None = None


class JsonlOptions(_FileOptions):
    pass


CONNECTOR_KINDS: dict[str, type[_Options]] = {
    "sqlite": SqliteOptions,
    "postgres": PostgresOptions,
    "mysql": MysqlOptions,
    "csv": CsvOptions,
    "jsonl": JsonlOptions,
}

#: kinds that can be read from but not written to
SOURCE_ONLY_KINDS = frozenset({"csv", "jsonl"})
