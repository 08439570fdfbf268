"""Nonces of messages received and still valid, in this process: ``seen`` on receipt, ``done``
once processed. Only a copy of a processed message is a replay; a message handed out again
because its consumer died before acknowledging it (at-least-once delivery) passes."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class SeenNonces:
    """Bounded: past ``capacity`` the oldest are forgotten; expired ones go a few at a time."""

    def __init__(self, *, capacity: int = 200_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, nonce: str, *, keep_s: float) -> bool:
        """False when a message with this nonce was processed already."""
        now = self._clock()
        with self._lock:
            for key, (until, _) in list(self._seen.items())[:100]:
                if until < now:
                    del self._seen[key]
            known = self._seen.get(nonce)
            if known is not None:
                return not known[1]
            self._seen[nonce] = (now + keep_s, False)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True

    def done(self, nonce: str, *, keep_s: float) -> None:
        with self._lock:
            self._seen[nonce] = (self._clock() + keep_s, True)
