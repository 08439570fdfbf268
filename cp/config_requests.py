"""A daemon asked for its desired config again: note it, and hand back the push that answers it."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from cp.config_store import ConfigPush, current_push
from cp.health import declared_daemon
from cp.models import DaemonEvent
from cp.protocol import ConfigRequest

EVENT_KIND = "config_requested"


def answer_config_request(session: Session, request: ConfigRequest, *, now: datetime) -> ConfigPush | None:
    """The push of the daemon's current desired state (None for an undeclared daemon or one with
    no desired state yet), recorded as a ``config_requested`` event either way for a declared one."""
    daemon = declared_daemon(session, request.name)
    if daemon is None:
        return None
    push = current_push(session, daemon)
    answer = f"pushing version {push.version}" if push is not None else "no desired config to push yet"
    session.add(
        DaemonEvent(
            at=now,
            daemon=daemon.name,
            kind=EVENT_KIND,
            reason=f"daemon asked for its config again (it has version "
            f"{request.applied_config_version}): {answer}",
        )
    )
    return push
