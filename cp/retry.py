"""Retry timing: exponential backoff with jitter and a cap. Pure; the caller passes the randomness."""

from __future__ import annotations

import random


def retry_delay(attempt: int, *, backoff: float, max_backoff: float, rng: random.Random) -> float:
    """Seconds before attempt ``attempt + 1``: the capped exponential, then a random half to all of it.

    The jitter spreads the retries of many runs that failed together (a database restart) instead of
    sending them back in one burst.
    """
    ceiling = min(max_backoff, backoff * 2.0 ** max(0, attempt - 1))
    return ceiling * rng.uniform(0.5, 1.0)
