"""Specification of the cp.* task retry policy: retried when the database is away, never for bad data."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from cp import tasks
from cp.celery_app import make_celery
from cp.models import DaemonEvent
from cp.protocol import CP_CONFIG_APPLIED
from cp.runtime import ControlPlane
from cp.settings import Settings
from cp.tasks import register_cp_tasks

APPLIED = {"v": 1, "name": "edge-1", "version": 3, "ok": True}


@pytest.fixture
def control_plane(tmp_path: Path) -> ControlPlane:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'cp.db'}")
    app = make_celery(settings, url="memory://")
    app.conf.task_always_eager = True  # retries run at once, in this thread
    cp = ControlPlane(settings, app)
    register_cp_tasks(app, cp)
    return cp


def failing(orig: Exception, *, times: int, calls: list[int]) -> Callable[..., Any]:
    def record(*_: Any, **__: Any) -> None:
        calls.append(1)
        if len(calls) <= times:
            raise OperationalError("UPDATE daemon SET ...", {}, orig)

    return record


def rejections(cp: ControlPlane) -> list[DaemonEvent]:
    with Session(cp.engine) as session:
        return list(session.exec(select(DaemonEvent).where(DaemonEvent.kind == "message_rejected")))


def test_a_locked_database_is_retried_until_the_message_is_recorded(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    locked = sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(tasks, "record_config_applied", failing(locked, times=2, calls=calls))

    control_plane.app.tasks[CP_CONFIG_APPLIED].apply(args=[APPLIED]).get()

    assert len(calls) == 3
    assert rejections(control_plane) == []


def test_a_statement_refused_for_its_data_is_rejected_once_and_never_retried(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    detail = "index row requires 100016 bytes, maximum size is 8191"
    too_big = psycopg.errors.ProgramLimitExceeded(detail)
    monkeypatch.setattr(tasks, "record_config_applied", failing(too_big, times=99, calls=calls))

    control_plane.app.tasks[CP_CONFIG_APPLIED].apply(args=[APPLIED]).get()

    assert len(calls) == 1
    [event] = rejections(control_plane)
    assert (event.daemon, event.reason) == (
        "edge-1",
        f"{CP_CONFIG_APPLIED}: data error: ProgramLimitExceeded: {detail}",
    )
