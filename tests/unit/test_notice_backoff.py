"""Retry timing of failed notice deliveries: doubling with jitter, a cap, and giving up."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from cp.alerts.backoff import RetryPolicy, is_retryable_status

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(first_delay=5.0, max_delay=600.0, give_up_after=86_400.0, max_attempts=50)


@pytest.mark.parametrize(
    ("attempts", "full"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (7, 320.0), (8, 600.0), (40, 600.0), (10_000, 600.0)],
    ids=["first", "second", "third", "seventh", "capped", "long-capped", "huge"],
)
def test_the_delay_doubles_from_the_first_up_to_the_cap_with_jitter_in_its_upper_half(
    attempts: int, full: float
) -> None:
    rng = random.Random(7)
    delays = [POLICY.delay(attempts, rng=rng) for _ in range(200)]
    assert all(full / 2 <= d <= full for d in delays)
    assert len(set(delays)) > 1  # jittered, not one fixed value


def test_the_next_attempt_is_that_delay_after_now() -> None:
    at = POLICY.next_attempt(attempts=1, created_at=T0, now=T0, rng=random.Random(1))
    assert at is not None and T0 + timedelta(seconds=2.5) <= at <= T0 + timedelta(seconds=5)


def test_a_notice_is_given_up_after_max_attempts() -> None:
    assert POLICY.next_attempt(attempts=50, created_at=T0, now=T0, rng=random.Random(1)) is None
    assert POLICY.next_attempt(attempts=49, created_at=T0, now=T0, rng=random.Random(1)) is not None


def test_a_notice_is_given_up_when_its_next_attempt_would_be_past_its_age_limit() -> None:
    late = T0 + timedelta(seconds=86_400 - 1)
    assert POLICY.next_attempt(attempts=3, created_at=T0, now=late, rng=random.Random(1)) is None
    early = T0 + timedelta(hours=1)
    assert POLICY.next_attempt(attempts=3, created_at=T0, now=early, rng=random.Random(1)) is not None


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (500, True),
        (502, True),
        (503, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
        (301, False),
    ],
    ids=lambda v: str(v),
)
def test_server_errors_timeouts_and_throttling_are_retried_other_client_errors_are_not(
    status: int, retryable: bool
) -> None:
    assert is_retryable_status(status) is retryable
