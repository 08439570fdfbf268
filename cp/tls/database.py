"""Verified TLS options for databases: PostgreSQL's libpq parameters, MySQL/MariaDB's ``ssl_*``.

Pure, apart from reading the certificate files when a MySQL context is made (on the daemon).
PostgreSQL takes libpq's own parameters in its DSN or URL (``sslmode``, ``sslrootcert``,
``sslcert``, ``sslkey``; libpq reads the files), and only what libpq would silently ignore or
misread is refused here: an unknown ``sslmode``, and a CA given to a mode that does not verify
with it. MySQL's modes follow the MySQL client's ``--ssl-mode`` names, without the ones that
encrypt without verifying on purpose (``REQUIRED``).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from cp.tls.context import client_context

LIBPQ_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
LIBPQ_VERIFYING = frozenset({"verify-ca", "verify-full"})
LIBPQ_DEFAULT_SSL_MODE = "prefer"
_REFERENCE = re.compile(r"\$\{(env|file):[^}]+\}")
_KEYWORD_VALUE = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)""")


def dsn_parameters(dsn: str) -> list[tuple[str, str]] | None:
    """The parameters of a libpq URL (its query) or key=value string; None when it does not parse
    (the driver then says why, at connect)."""
    if "://" in dsn:
        query = dsn.partition("?")[2].partition("#")[0]
        try:
            return parse_qsl(query, keep_blank_values=True)
        except ValueError:
            return None
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(dsn.rstrip()):
        match = _KEYWORD_VALUE.match(dsn, position)
        if not match or match.end() == position:
            return None
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        pairs.append((key, value))
        position = match.end()
    return pairs


def postgres_tls_problem(dsn: str) -> str | None:
    """Why the TLS parameters of a PostgreSQL DSN are refused, or None. A value that is a secret
    reference is resolved only on the daemon and cannot be judged here."""
    parameters = dsn_parameters(dsn)
    if parameters is None:
        return None
    modes = [value for key, value in parameters if key == "sslmode"]
    for mode in modes:
        if not _REFERENCE.search(mode) and mode not in LIBPQ_SSL_MODES:
            return f"sslmode={mode!r} is not one of {', '.join(LIBPQ_SSL_MODES)}"
    mode = modes[-1] if modes else LIBPQ_DEFAULT_SSL_MODE  # libpq takes the last one given
    if _REFERENCE.search(mode) or mode in LIBPQ_VERIFYING:
        return None
    if any(key == "sslrootcert" for key, _ in parameters):
        return (
            f"sslrootcert is given, but sslmode={mode} does not verify the server with it "
            "(use sslmode=verify-full)"
        )
    return None


MYSQL_SSL_MODES = ("disabled", "preferred", "verify_ca", "verify_identity")
MYSQL_VERIFYING = frozenset({"verify_ca", "verify_identity"})


@dataclass(frozen=True)
class MysqlTls:
    """A MySQL/MariaDB connector's TLS: ``mode`` and the files of ``verify_*`` modes (paths on
    the daemon). ``preferred`` leaves PyMySQL its default; ``verify_ca`` checks the certificate
    against ``ca`` (or the system's store), ``verify_identity`` the host name as well."""

    mode: str = "preferred"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def problem(self) -> str | None:
        """Why these options are refused (one line, naming the options), or None."""
        if self.mode not in MYSQL_SSL_MODES:
            unverified = (
                " (required encrypts without verifying: use verify_identity)"
                if self.mode == "required"
                else ""
            )
            return f"ssl_mode {self.mode!r} is not one of {', '.join(MYSQL_SSL_MODES)}{unverified}"
        files = [
            name
            for name, value in (("ssl_ca", self.ca), ("ssl_cert", self.cert), ("ssl_key", self.key))
            if value
        ]
        if files and self.mode not in MYSQL_VERIFYING:
            return (
                f"{', '.join(files)} given, but ssl_mode {self.mode} does not verify the server "
                "(use ssl_mode: verify_identity)"
            )
        if self.key and not self.cert:
            return "ssl_key needs ssl_cert (the client certificate) too"
        return None

    def pymysql_arguments(self) -> dict[str, Any]:
        """PyMySQL's connect arguments for this mode; reads the files (TlsConfigError)."""
        if self.mode == "disabled":
            return {"ssl_disabled": True}
        if self.mode not in MYSQL_VERIFYING:
            return {}
        context: ssl.SSLContext = client_context(
            ca_file=self.ca,
            cert_file=self.cert,
            key_file=self.key,
            check_hostname=self.mode == "verify_identity",
        )
        return {"ssl": context}  # PyMySQL then requires TLS and uses this context as it is
