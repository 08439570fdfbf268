"""``mycelial flower``: Flower with basic auth on every URL, credentials kept in the home.

Flower 2.2 asks for its basic-auth credentials only on the UI and ``/api/*``: ``/metrics`` (task
names, worker names, queue and run counts) and ``/healthcheck`` always answer, and static files
and unknown paths answer too. Here the Tornado application checks the ``Authorization`` header
before it routes a request, so no URL of this or a later Flower version is served without it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import hmac
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest

from cp.celery_app import make_celery
from cp.cli.output import info, warn
from cp.private_files import open_private, private_dir, tighten
from cp.settings import Settings
from cp.tls.flower import verify_flower_broker_client

CREDENTIALS_FILE = "flower-credentials"
FLOWER_USER = "admin"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# the task list shows a job's argsrepr (pipeline, run, attempt N/M, daemon) and a failed run's error
TASK_COLUMNS = "name,uuid,state,args,exception,received,runtime,worker"


@dataclasses.dataclass(frozen=True)
class FlowerCredentials:
    user: str
    password: str
    path: Path
    created: bool  # by this call: the only time the password is shown

    @property
    def basic_auth(self) -> str:
        return f"{self.user}:{self.password}"


def flower_credentials(home: Path) -> FlowerCredentials:
    """Flower's credentials from ``HOME/flower-credentials`` (0600), generated on first use.

    Processes starting at once take turns on a lock file, so exactly one of them creates the
    password (and shows it) and the others read it; a file without ``user:password`` is replaced.
    """
    path = home / CREDENTIALS_FILE
    private_dir(home)
    lock = open_private(home / f".{CREDENTIALS_FILE}.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one open file each: threads exclude each other too
        existing = _read(path)
        if existing is not None:
            return existing
        password = secrets.token_urlsafe(18)
        _write(path, f"{FLOWER_USER}:{password}\n")
        return FlowerCredentials(FLOWER_USER, password, path, created=True)
    finally:
        os.close(lock)


def _read(path: Path) -> FlowerCredentials | None:
    """The stored credentials; None when there is no file or it holds no ``user:password``."""
    try:
        tighten(path)  # a file an older release or a copy left readable by others
        user, _, password = path.read_text(encoding="utf-8").strip().partition(":")
    except FileNotFoundError:
        return None
    if not user or not password:
        return None
    return FlowerCredentials(user, password, path, created=False)


def _write(path: Path, text: str) -> None:
    """Atomically: a reader finds the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def announce(credentials: FlowerCredentials, *, url: str) -> None:
    """The password is printed when it is created, and never again: later only where it is."""
    if credentials.created:
        info(
            f"Flower: {url}  (user {credentials.user}, password {credentials.password}; "
            f"shown only now, kept in {credentials.path})"
        )
    else:
        info(f"Flower: {url}  (user {credentials.user}, password in {credentials.path})")


def authorized(header: str | None, expected: bytes) -> bool:
    """Whether an ``Authorization`` header carries exactly the expected ``user:password``."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected)


@tornado.web.stream_request_body  # a body is never buffered for a request that is refused
class Unauthorized(tornado.web.RequestHandler):
    """What every request without the right credentials gets, whatever its path or method."""

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.set_header("Content-Type", "text/plain")
        self.finish("Access denied\n")

    def check_xsrf_cookie(self) -> None:
        """No XSRF check before refusing: an unauthenticated POST gets 401 like any request."""

    def data_received(self, chunk: bytes) -> None:
        """Discarded (prepare has answered already)."""


def guarded_flower_class(flower_class: type[Any], credentials: str) -> type[Any]:
    """A subclass of Flower's Tornado application that refuses unauthenticated requests before
    routing them, and whose own basic-auth check (UI and API) uses the same credentials."""
    expected = credentials.encode()

    class GuardedFlower(flower_class):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.options.basic_auth = [credentials]  # Flower's own check agrees with the gate

        def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
            if not authorized(request.headers.get("Authorization"), expected):
                return self.get_handler_delegate(request, Unauthorized)
            return super().find_handler(request, **kwargs)

    return GuardedFlower


def flower_command() -> Any:
    """Flower's command module, checked to build its application as Flower 2.2 does. Fails closed:
    a Flower that builds it elsewhere is not started at all, rather than started unguarded."""
    import flower.app
    import flower.command

    original = getattr(flower.command, "Flower", None)
    if not (isinstance(original, type) and issubclass(original, flower.app.Flower)):
        raise RuntimeError(
            "this Flower version does not build its application as flower 2.2 does; "
            "refusing to start it without authentication on every URL"
        )
    return flower.command


def run_flower(settings: Settings, *, address: str, port: int) -> None:
    command = flower_command()  # before a password is made or shown
    credentials = flower_credentials(settings.home)
    host = f"[{address}]" if ":" in address else address
    announce(credentials, url=f"http://{host or '0.0.0.0'}:{port}")
    if address not in LOOPBACK:
        warn(
            f"Flower listens on {address or 'every interface'}: other machines can reach it, over "
            "plain HTTP (prefer 127.0.0.1 behind an SSH tunnel or a TLS reverse proxy)"
        )
    # the command builds this subclass; the credentials stay in memory (not argv, not environment)
    command.Flower = guarded_flower_class(command.Flower, credentials.basic_auth)
    os.environ.pop("FLOWER_BASIC_AUTH", None)  # ours is the only one
    app = make_celery(settings)
    verify_flower_broker_client()  # its broker page verifies a rediss:// broker like every process
    app.start(
        [
            "flower",
            f"--address={address}",
            f"--port={port}",
            "--purge_offline_workers=60",
            f"--tasks_columns={TASK_COLUMNS}",
        ]
    )
