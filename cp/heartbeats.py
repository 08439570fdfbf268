"""Heartbeats coalesce: each worker keeps the newest per daemon and writes them all at once.

A heartbeat only says "this daemon was alive at sent_at, running these runs"; a newer one makes
every older one worthless. So ``cp.heartbeat`` acknowledges its message at once, offers the
heartbeat to a ``HeartbeatCoalescer`` and returns; a ``Flusher`` thread hands what has gathered
to one bulk write every ``heartbeat_flush_interval``. A worker killed in between loses at most
that interval of heartbeats, which the next ones (every few seconds) make good.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cp.protocol import Heartbeat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedHeartbeat:
    beat: Heartbeat
    received_at: datetime


class HeartbeatCoalescer:
    """The newest heartbeat of each daemon since the last ``take``; thread-safe and bounded."""

    def __init__(self, *, max_daemons: int) -> None:
        self._max = max_daemons
        self._pending: dict[str, ReceivedHeartbeat] = {}
        self._dropped = 0
        self._lock = threading.Lock()

    def offer(self, received: ReceivedHeartbeat) -> None:
        """Keep ``received`` unless a newer heartbeat of the same daemon is already waiting."""
        name = received.beat.name
        with self._lock:
            known = self._pending.get(name)
            if known is None and len(self._pending) >= self._max:
                self._dropped += 1
                return
            if known is None or received.beat.sent_at >= known.beat.sent_at:
                self._pending[name] = received

    def take(self) -> tuple[list[ReceivedHeartbeat], int]:
        """Everything waiting, and how many heartbeats were dropped for want of room since last time."""
        with self._lock:
            pending, dropped = list(self._pending.values()), self._dropped
            self._pending, self._dropped = {}, 0
        return pending, dropped

    def give_back(self, batch: list[ReceivedHeartbeat]) -> None:
        """Return a batch that could not be written; heartbeats that arrived since win."""
        for received in batch:
            self.offer(received)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


class Flusher:
    """A daemon thread that calls ``flush`` every ``interval`` seconds while work is waiting.

    ``ensure_running`` starts it lazily, once per process: a prefork child gets its own thread.
    """

    def __init__(self, flush: Callable[[], None], *, interval: float, name: str = "heartbeats") -> None:
        self._flush = flush
        self._interval = interval
        self._name = name
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last flush (a worker shutting down)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self._stop.set()
        thread.join(timeout=max(5.0, 4 * self._interval))

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            stopping = self._stop.wait(self._interval)
            try:
                self._flush()
            except Exception:  # a bug must not end heartbeat recording for the life of the worker
                log.exception("heartbeat flush failed")
