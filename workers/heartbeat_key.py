"""A daemon's heartbeat overwrites one Redis key of its own instead of queueing a task.

Only a daemon's newest heartbeat matters, so queueing them made the control plane pay a whole
Celery task (three round trips, two log lines) for every one and let a backlog of stale ones
grow. The key holds the newest and nothing else; it expires after ``HEARTBEAT_KEY_TTL_SECONDS``
and the control plane reads every declared daemon's key in one pipelined round trip
(cp/heartbeat_keys.py). A heartbeat that cannot be written (broker away) is simply not sent: the
next one, seconds later, says everything it would have said.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from cp.protocol import HEARTBEAT_KEY_TTL_SECONDS, Heartbeat, dump, heartbeat_key

log = logging.getLogger(__name__)


class HeartbeatWriter:
    """Writes heartbeats to the daemon's key; keeps one connection and remakes it after an error."""

    def __init__(
        self,
        connect: Callable[[], tuple[Any, Any] | None],
        sign: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None,
    ) -> None:
        self._connect = connect
        self._sign = sign  # (key, heartbeat) -> envelope; the control plane refuses unsigned ones
        self._connection: Any = None
        self._client: Any = None
        self._unsupported = False
        self._failing = False
        self._lock = threading.Lock()

    def write(self, beat: Heartbeat) -> bool:
        """Write ``beat``; False when this broker has no keys (the caller queues it instead).

        A broker error is logged once per outage, never raised.
        """
        key, payload = heartbeat_key(beat.name), dump(beat)
        envelope = self._sign(key, payload) if self._sign is not None else None
        value = json.dumps({"auth": envelope, "beat": payload}, separators=(",", ":"))
        with self._lock:
            if self._unsupported:
                return False
            try:
                if self._client is None:
                    made = self._connect()
                    if made is None:
                        self._unsupported = True
                        return False
                    self._connection, self._client = made
                self._client.set(key, value, ex=HEARTBEAT_KEY_TTL_SECONDS)
            except Exception as exc:  # the broker is away or refused: the next heartbeat tries again
                self._drop()
                if not self._failing:
                    log.warning("heartbeat of %s not delivered (%s); trying every interval", beat.name, exc)
                    self._failing = True
                return True
            if self._failing:
                log.info("heartbeats of %s delivered again", beat.name)
                self._failing = False
            return True

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection, self._client = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # closing a broken connection may fail too; it is let go either way
                log.debug("closing the heartbeat connection failed", exc_info=True)
