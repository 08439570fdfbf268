"""Rejections on a control-plane worker become ``DaemonEvent`` rows of kind ``message_rejected``
(malformed) or ``security`` (not authenticated)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cp.health import record_rejected_message
from cp.messaging.envelope_check import Rejection
from cp.messaging.recorder import Sink
from cp.models import utcnow

if TYPE_CHECKING:
    from cp.runtime import ControlPlane


def event_reason(*, queue: str, reason: str, suppressed: int) -> str:
    """The text of a rejection event: queue, reason, and how many went unrecorded before it."""
    more = f" ({suppressed} more rejected before this one, not recorded one by one)" if suppressed else ""
    return f"queue {queue}: {reason}{more}"


def database_sink(cp: ControlPlane) -> Sink:
    """Write each recorded rejection of this worker's own queue as an event row."""

    def record(rejection: Rejection, suppressed: int) -> None:
        with cp.session() as session:
            record_rejected_message(
                session,
                task=rejection.task or "<no task>",
                daemon=None,
                reason=event_reason(queue=rejection.queue, reason=rejection.reason, suppressed=suppressed),
                now=utcnow(),
                kind=rejection.kind,
            )

    return record
