"""One line for an error: a refused TLS certificate says so, and where to look."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from cp.tls.context import CERTIFICATE_REFUSED, tls_failure, tls_refused

BROKER_TLS_HINT = (
    "check that MYCELIAL_BROKER_CA_FILE (or, without it, the system's trust store) holds the CA "
    "that signed the broker's certificate, and that the certificate names the host in "
    "MYCELIAL_BROKER_URL"
)
BROKER_HANDSHAKE_HINT = (
    "a broker that asks for a client certificate closes the connection without one it trusts: "
    "check MYCELIAL_BROKER_CERT_FILE and MYCELIAL_BROKER_KEY_FILE"
)
DATABASE_TLS_HINT = "check sslmode, sslrootcert and the host in MYCELIAL_DATABASE_URL"


def _one_line(text: str) -> str:
    # SQLAlchemy appends "[SQL: ...]" and "(Background on this error at: ...)" lines
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith(("(Background on this error", "[SQL:")))


def tls_reason(exc: BaseException) -> str | None:
    """``broker: <why> (<what to check>)`` or the same for the database, when ``exc`` is a TLS
    failure; None otherwise."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    cause = orig if orig is not None else exc
    why = tls_failure(cause) or (_one_line(str(cause)) if tls_refused(cause) else None)
    if why is None:
        return None
    if isinstance(exc, DBAPIError):
        return f"database: {why} ({DATABASE_TLS_HINT})"
    hint = BROKER_TLS_HINT if why.startswith(CERTIFICATE_REFUSED) else BROKER_HANDSHAKE_HINT
    return f"broker: {why} ({hint})"


def reason(exc: BaseException) -> str:
    """Why ``exc`` happened, in one line."""
    return tls_reason(exc) or _one_line(str(exc)) or type(exc).__name__


def describe(exc: BaseException) -> str:
    """An unexpected error for the CLI's ``error:`` line."""
    tls = tls_reason(exc)
    if tls is not None:
        return tls
    return f"{type(exc).__name__}: {_one_line(str(exc))} (run with --debug for a traceback)"
