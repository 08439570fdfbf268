"""The HTTP server of ``/metrics``: prometheus-client's WSGI app behind an optional credential
check (basic auth or a bearer token, each read from a file), on a thread per request."""

from __future__ import annotations

import base64
import binascii
import hmac
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

MAX_SECRET_BYTES = 4_096

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class AuthFileError(ValueError):
    """A credentials file that cannot be used (one line, naming the file, never its content)."""


@dataclass(frozen=True)
class MetricsAuth:
    """What a scrape must present: ``user:password`` (basic) and/or a bearer token."""

    basic: bytes | None = None
    bearer: bytes | None = None

    @property
    def required(self) -> bool:
        return self.basic is not None or self.bearer is not None

    def allows(self, header: str | None) -> bool:
        if not self.required:
            return True
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.bearer is not None:
            return hmac.compare_digest(value.encode(), self.bearer)
        if scheme.lower() == "basic" and self.basic is not None:
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given, self.basic)
        return False


def read_secret(path: Path, *, what: str) -> bytes:
    """The first line of a small file holding a secret."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise AuthFileError(f"{what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise AuthFileError(f"{what} {path}: longer than {MAX_SECRET_BYTES} bytes")
    secret = data.strip().split(b"\n", 1)[0].strip()
    if not secret:
        raise AuthFileError(f"{what} {path}: empty")
    return secret


def load_auth(*, basic_file: Path | None, bearer_file: Path | None) -> MetricsAuth:
    basic = read_secret(basic_file, what="basic-auth file") if basic_file else None
    if basic is not None and b":" not in basic:
        raise AuthFileError(f"basic-auth file {basic_file}: expected user:password")
    bearer = read_secret(bearer_file, what="bearer token file") if bearer_file else None
    return MetricsAuth(basic=basic, bearer=bearer)


def guarded(app: WsgiApp, auth: MetricsAuth) -> WsgiApp:
    """``app`` answering 401 to a request without the expected credentials, and 404 off /metrics."""

    def handle(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not auth.allows(environ.get("HTTP_AUTHORIZATION")):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Basic realm="mycelial metrics"')],
            )
            return [b"Unauthorized\n"]
        if environ.get("PATH_INFO", "/") not in {"/metrics", "/"}:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found: see /metrics\n"]
        return app(environ, start_response)

    return handle


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # the base class's name
        """No access log line per scrape."""


def serve(registry: CollectorRegistry, *, address: str, port: int, auth: MetricsAuth) -> ThreadingWSGIServer:
    """A started server (on a thread of its own); ``port`` 0 picks a free one (``server_port``)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(
        address, port, guarded(make_wsgi_app(registry), auth), Server, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="mycelial-metrics-http", daemon=True)
    thread.start()
    return server
