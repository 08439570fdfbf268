"""Connector kinds known to the control plane, with the options each one takes.

Options are validated at apply time; the daemon resolves ``${env:NAME}`` / ``${file:/path}``
references at run time, so a password never sits in the configuration, a message or a log line.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

_REFERENCE = re.compile(r"^\$\{(env|file):[^}]+\}$")
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*(\S+)")
_COLUMN_TYPE = re.compile(
    r"^(integer|bigint|float|decimal(\(\d+\s*(,\s*\d+)?\))?|text|boolean|date|timestamp|timestamptz|bytes|json)$"
)


def _require_reference(value: str, what: str) -> None:
    if not _REFERENCE.match(value):
        raise ValueError(f"{what} must be a secret reference such as ${{env:PG_PASSWORD}}, not a literal")


def _check_dsn_password(dsn: str) -> None:
    """A password inside a connection string must be a reference, never the secret itself."""
    if "://" in dsn:
        password = urlsplit(dsn.replace("${", "%7B").replace("}", "%7D")).password
        if password:
            _require_reference(password.replace("%7B", "${").replace("%7D", "}"), "the password in dsn")
        return
    match = _KEYWORD_PASSWORD.search(dsn)
    if match:
        _require_reference(match.group(1), "the password in dsn")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SqliteOptions(_Options):
    """A SQLite database file; a relative path is resolved against the daemon's home directory."""

    path: str = Field(min_length=1)


class PostgresOptions(_Options):
    """``dsn``: a libpq URL or key=value string; its password, if any, as a secret reference."""

    dsn: str = Field(min_length=1)
    schema_: str = Field(default="public", alias="schema")

    @field_validator("dsn")
    @classmethod
    def _no_literal_password(cls, value: str) -> str:
        _check_dsn_password(value)
        return value


class MysqlOptions(_Options):
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password: str | None = None
    database: str = Field(min_length=1)

    @field_validator("password")
    @classmethod
    def _password_is_reference(cls, value: str | None) -> str | None:
        if value:
            _require_reference(value, "password")
        return value


class _FileOptions(_Options):
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


CONNECTOR_KINDS: dict[str, type[BaseModel]] = {
    "sqlite": SqliteOptions,
    "postgres": PostgresOptions,
    "mysql": MysqlOptions,
    "csv": CsvOptions,
    "jsonl": JsonlOptions,
}

#: kinds that can be read from but not written to
SOURCE_ONLY_KINDS = frozenset({"csv", "jsonl"})
