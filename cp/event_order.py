"""Which run events apply to a run: the ordering rules of docs/protocol.md, as pure functions."""

from __future__ import annotations

from cp.models import RunState
from cp.protocol import RunEvent


def ignore_reason(*, state: RunState, attempt: int, last_seq: int | None, event: RunEvent) -> str | None:
    """Why ``event`` must not change a run in ``state`` at ``attempt``; None when it applies.

    A finished run never moves again, an event of another attempt never moves the current one,
    and an event no newer than the newest applied to this attempt (late or redelivered) is stale.
    """
    if state.finished:
        return f"the run is {state} already"
    if event.attempt is not None and event.attempt != attempt:
        return f"it belongs to attempt {event.attempt}, the run is at attempt {attempt}"
    if event.seq is not None and last_seq is not None and event.seq <= last_seq:
        return f"its seq {event.seq} is not newer than {last_seq}, applied already"
    return None


def newest_seq(last_seq: int | None, event: RunEvent) -> int | None:
    """The attempt's newest applied seq once ``event`` is applied (events without one leave it)."""
    if event.seq is None:
        return last_seq
    return event.seq if last_seq is None else max(last_seq, event.seq)
