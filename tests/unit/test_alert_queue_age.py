"""The age of a daemon queue's oldest message, from the signed envelope of the list's tail."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cp.alerts.queue_age import message_age

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def message(at: object) -> bytes:
    return json.dumps({"body": "", "headers": {"mycelial_auth": {"at": at, "by": "cp"}}}).encode()


def test_the_age_is_counted_from_the_envelopes_issue_time() -> None:
    issued = int(NOW.timestamp() * 1000) - 90_500

    assert message_age(message(issued), now=NOW) == pytest.approx(90.5)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(None, id="empty-queue"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(json.dumps({"headers": {}}).encode(), id="unsigned"),
        pytest.param(message("yesterday"), id="not-a-number"),
        pytest.param(message(True), id="a-boolean"),
        pytest.param(b"[" * 2_000_000, id="too-large"),
    ],
)
def test_a_message_that_cannot_be_read_has_no_age(raw: object) -> None:
    assert message_age(raw, now=NOW) is None


def test_a_message_from_the_future_is_zero_seconds_old() -> None:
    assert message_age(message(int(NOW.timestamp() * 1000) + 5_000), now=NOW) == 0.0
