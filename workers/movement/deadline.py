"""An attempt's time limit, counted on the monotonic clock from when the daemon starts the attempt.

Connectors turn the time left into server-side statement and lock timeouts; the engine and the
sinks check it before every commit, so nothing commits after it, nor after the control plane
ended the attempt (revoked its task: a cancel, or its own expiry of a run the daemon outlived).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from workers.movement.errors import CancelledError, TimedOutError

Clock = Callable[[], float]
MIN_STATEMENT_SECONDS = 0.001  # zero means "no limit" to every server: never hand one a zero


class Deadline:
    """``limit`` seconds after ``start`` (a reading of ``clock``); no limit at all when it is None.

    ``ended`` says whether the control plane has ended the attempt meanwhile.
    """

    def __init__(
        self,
        limit: float | None,
        *,
        start: float,
        clock: Clock = time.monotonic,
        ended: Callable[[], bool] | None = None,
    ) -> None:
        self.limit = limit
        self.at = None if limit is None else start + limit
        self._clock = clock
        self._ended = ended

    @classmethod
    def starting_now(
        cls, limit: float | None, *, clock: Clock = time.monotonic, ended: Callable[[], bool] | None = None
    ) -> Deadline:
        return cls(limit, start=clock(), clock=clock, ended=ended)

    def left(self) -> float | None:
        """Seconds left, never below zero; None without a limit."""
        return None if self.at is None else max(0.0, self.at - self._clock())

    def passed(self) -> bool:
        return self.at is not None and self._clock() >= self.at

    def error(self, detail: str) -> TimedOutError:
        limit = f"{self.limit:g}s" if self.limit is not None else "its time limit"
        return TimedOutError(f"timed out after {limit} ({detail})")

    def check(self, detail: str) -> None:
        """Raise TimedOutError, naming ``detail`` (what was about to happen), once the deadline passed;
        CancelledError once the control plane ended the attempt."""
        if self.passed():
            raise self.error(detail)
        if self._ended is not None and self._ended():
            raise CancelledError(f"cancelled between batches ({detail}); everything before is committed")

    def statement_seconds(self, detail: str) -> float | None:
        """The time left as a statement timeout: above zero; raises once the deadline passed."""
        self.check(detail)
        left = self.left()
        return None if left is None else max(MIN_STATEMENT_SECONDS, left)

    def statement_ms(self, detail: str) -> int | None:
        """The time left in whole milliseconds, rounded up (at least 1); raises once it passed."""
        seconds = self.statement_seconds(detail)
        return None if seconds is None else max(1, math.ceil(seconds * 1000))

    def whole_seconds(self, detail: str) -> int | None:
        """The time left in whole seconds, rounded up (at least 1), for servers that count no finer."""
        seconds = self.statement_seconds(detail)
        return None if seconds is None else max(1, math.ceil(seconds))

    def bound(self, seconds: float) -> float:
        """``seconds``, or the time left if that is shorter (a wait, a connect timeout)."""
        left = self.left()
        return seconds if left is None else min(seconds, max(MIN_STATEMENT_SECONDS, left))


NO_DEADLINE = Deadline(None, start=0.0)
