"""The control plane's acknowledgement of stored log records: a Redis key per daemon holding the
highest seq it stored, raised only (a late, redelivered batch cannot lower it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from cp.protocol import log_ack_key

log = logging.getLogger(__name__)

ACK_TTL_SECONDS = 7 * 86_400  # a daemon gone for a week starts from what its own disk says
# SET key to ARGV[1] unless it holds a higher number already
RAISE_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""


class LogAcks:
    """Writes acknowledgements over one broker connection, made again after an error."""

    def __init__(self, connect: Callable[[], tuple[Any, Any] | None]) -> None:
        self._connect = connect
        self._connection: Any = None
        self._client: Any = None
        self._script: Any = None
        self._lock = threading.Lock()

    def acknowledge(self, daemon: str, seq: int) -> bool:
        """Raise ``daemon``'s acknowledgement to ``seq``; False (logged) when the broker is away:
        the daemon sends the batch again and nothing is stored twice."""
        with self._lock:
            try:
                if self._client is None:
                    made = self._connect()
                    if made is None:
                        return False
                    self._connection, self._client = made
                    self._script = self._client.register_script(RAISE_SCRIPT)
                script = self._script
            except Exception as exc:
                self._drop()
                log.warning("cannot acknowledge the logs of %s: %s", daemon, exc)
                return False
        try:
            script(keys=[log_ack_key(daemon)], args=[seq, ACK_TTL_SECONDS])
            return True
        except Exception as exc:
            with self._lock:
                self._drop()
            log.warning("cannot acknowledge the logs of %s: %s", daemon, exc)
            return False

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection, self._client, self._script = self._connection, None, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:
                log.debug("closing the acknowledgement connection failed", exc_info=True)
