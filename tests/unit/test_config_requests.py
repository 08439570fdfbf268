"""A daemon's `cp.config_request` (an admin's `control mycelial_refresh_config`) is answered with
its current desired config, and noted as an event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, select

from cp.config_requests import EVENT_KIND, answer_config_request
from cp.models import DaemonEvent
from cp.protocol import ConfigRequest

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_declared_daemon_asking_again_gets_its_desired_state_and_an_event_is_recorded(
    session: Session, apply: Callable[..., Any], raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=NOW)
    push = answer_config_request(session, ConfigRequest(name="edge-paris", applied_config_version=1), now=NOW)
    session.commit()
    assert push is not None
    assert (push.daemon, push.version) == ("edge-paris", 1)
    assert [p.name for p in push.state.pipelines] == ["orders"]
    [event] = session.exec(select(DaemonEvent).where(DaemonEvent.kind == EVENT_KIND)).all()
    assert event.daemon == "edge-paris"
    assert "pushing version 1" in event.reason


def test_a_name_the_configuration_does_not_declare_gets_nothing_and_leaves_no_event(
    session: Session, apply: Callable[..., Any], raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=NOW)
    assert answer_config_request(session, ConfigRequest(name="stranger"), now=NOW) is None
    session.commit()
    assert session.exec(select(DaemonEvent).where(DaemonEvent.kind == EVENT_KIND)).all() == []
