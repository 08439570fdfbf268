"""A daemon reports the messages its guard rejected to the control plane (rate-limited there)."""

from __future__ import annotations

from cp.messaging.envelope_check import Rejection
from cp.messaging.recorder import Sink
from cp.models import utcnow
from cp.protocol import CP_MESSAGE_REJECTED, MessageRejected, clip
from workers.runtime import DaemonRuntime


def report_to_control_plane(daemon: DaemonRuntime) -> Sink:
    """Send each recorded rejection as a ``cp.message_rejected`` message."""

    def report(rejection: Rejection, suppressed: int) -> None:
        daemon.send(
            CP_MESSAGE_REJECTED,
            MessageRejected(
                name=daemon.name,
                queue=clip(rejection.queue, 255) or "",
                reason=clip(rejection.reason) or "",
                task=clip(rejection.task, 255),
                task_id=clip(rejection.task_id, 255),
                at=utcnow(),
                suppressed=suppressed,
                kind="security" if rejection.kind == "security" else "message_rejected",
            ),
            argsrepr=f"daemon={daemon.name} queue={rejection.queue}",
        )

    return report
