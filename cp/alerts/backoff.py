"""When a failed delivery is tried again, and when it is given up: pure functions of the attempt
count and the clock, so tests pass ``now`` and a seeded random source."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

# statuses worth another attempt: the receiver timed out, asked to slow down, or failed itself
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float = 5.0  # seconds after the first failure
    max_delay: float = 600.0
    give_up_after: float = 86_400.0  # seconds since the notice was written
    max_attempts: int = 200

    def delay(self, attempts: int, *, rng: random.Random) -> float:
        """Seconds before attempt ``attempts + 1``, after ``attempts`` failed ones: the delay
        doubles from ``first_delay`` up to ``max_delay``, each drawn in [half, full] ("equal
        jitter") so many notices failing together do not come back in step, yet never at once."""
        full = min(self.max_delay, self.first_delay * 2.0 ** max(0, min(attempts - 1, 60)))
        return rng.uniform(full / 2, full)

    def next_attempt(
        self, *, attempts: int, created_at: datetime, now: datetime, rng: random.Random
    ) -> datetime | None:
        """When to try again after ``attempts`` failures, or None to give up."""
        if attempts >= self.max_attempts:
            return None
        at = now + timedelta(seconds=self.delay(attempts, rng=rng))
        if at - created_at > timedelta(seconds=self.give_up_after):
            return None
        return at


def is_retryable_status(status: int) -> bool:
    """5xx, 408 and 429 are tried again; other 3xx and 4xx answers will not change."""
    return status >= 500 or status in RETRYABLE_CLIENT_STATUSES
