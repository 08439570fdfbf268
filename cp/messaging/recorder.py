"""Rejection events recorded off the consumer's loop, rate-limited so a flood stays a trickle."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from cp.messaging.envelope_check import Rejection

log = logging.getLogger(__name__)

# records one rejection; ``suppressed`` counts those not recorded since the previous one
Sink = Callable[[Rejection, int], None]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class RejectionRecorder:
    """Hands rejections to a sink on a thread of its own; never blocks the caller."""

    def __init__(self, sink: Sink, *, per_second: float, backlog: int = 100) -> None:
        self._sink = sink
        self._bucket = TokenBucket(rate=per_second, burst=max(1.0, 10 * per_second))
        self._queue: queue.Queue[tuple[Rejection, int]] = queue.Queue(maxsize=backlog)
        self._lock = threading.Lock()
        self._suppressed = 0
        self._thread: threading.Thread | None = None

    def offer(self, rejection: Rejection) -> None:
        with self._lock:
            if not self._bucket.take():
                self._suppressed += 1
                return
            try:
                self._queue.put_nowait((rejection, self._suppressed))
            except queue.Full:
                self._suppressed += 1
                return
            self._suppressed = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="mycelial-rejections", daemon=True)
                self._thread.start()

    def _drain(self) -> None:
        while True:
            rejection, suppressed = self._queue.get()
            try:
                self._sink(rejection, suppressed)
            except Exception:  # the event is lost, the consumer is not
                log.exception("could not record the rejection of a message on %s", rejection.queue)
