"""Specification of the run-event ordering rules: which event may still change a run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cp.event_order import ignore_reason, newest_seq
from cp.models import RunState
from cp.protocol import RunEvent

AT = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


def event(state: str = "progress", *, attempt: int | None = 2, seq: int | None = 5) -> RunEvent:
    return RunEvent(run_key="orders@1", daemon="edge-1", state=state, at=AT, attempt=attempt, seq=seq)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "attempt", "last_seq", "incoming", "ignored_because"),
    [
        (RunState.RUNNING, 2, 4, event(seq=5), None),
        (RunState.QUEUED, 2, None, event("started", seq=1), None),
        (RunState.RUNNING, 2, 5, event(seq=5), "not newer than 5"),
        (RunState.RUNNING, 2, 7, event("started", seq=1), "not newer than 7"),
        (RunState.RUNNING, 2, 7, event("succeeded", seq=6), "not newer than 7"),
        (RunState.SUCCEEDED, 2, 4, event("progress", seq=9), "succeeded already"),
        (RunState.FAILED, 2, 4, event("started", seq=9), "failed already"),
        (RunState.CANCELLED, 2, None, event("succeeded", seq=None), "cancelled already"),
        (RunState.RUNNING, 2, 4, event(attempt=1, seq=9), "belongs to attempt 1"),
        (RunState.SCHEDULED, 3, None, event("failed", attempt=2, seq=9), "belongs to attempt 2"),
        (RunState.RUNNING, 2, 7, event(seq=None), None),
        (RunState.RUNNING, 2, 7, event(attempt=None, seq=8), None),
    ],
)
def test_an_event_applies_only_to_an_unfinished_run_of_its_attempt_and_only_when_newer(
    state: RunState, attempt: int, last_seq: int | None, incoming: RunEvent, ignored_because: str | None
) -> None:
    reason = ignore_reason(state=state, attempt=attempt, last_seq=last_seq, event=incoming)

    if ignored_because is None:
        assert reason is None
    else:
        assert reason is not None and ignored_because in reason


@pytest.mark.parametrize(
    ("last_seq", "incoming", "expected"),
    [
        (None, event(seq=3), 3),
        (2, event(seq=3), 3),
        (4, event(seq=3), 4),
        (4, event(seq=None), 4),
        (None, event(seq=None), None),
    ],
)
def test_the_newest_applied_seq_only_moves_forward(
    last_seq: int | None, incoming: RunEvent, expected: int | None
) -> None:
    assert newest_seq(last_seq, incoming) == expected
