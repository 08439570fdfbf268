"""Specification of what Flower is told: a run's task ends as the run ended, with its error in one
scrubbed line; housekeeping tasks send no task event at all, neither from their worker nor from
whoever publishes them; a job shows pipeline, run, attempt of max and daemon, and nothing secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery import Celery
from celery.exceptions import Ignore
from celery.worker.consumer import Consumer

from cp.celery_app import make_celery
from cp.messaging.unlisted import UNLISTED_TASKS
from cp.protocol import (
    CP_CHECK_DAEMON_HEALTH,
    CP_PROBE_REPLY,
    CP_QUEUE,
    CP_RUN_EVENT,
    DAEMON_PROBE,
    DAEMON_RUN_JOB,
    daemon_queue,
)
from cp.runtime import ControlPlane
from cp.settings import Settings
from cp.tasks import register_cp_tasks
from tests.unit.test_guard import FakeMessage
from workers.jobs import Outcome
from workers.runtime import DaemonRuntime
from workers.secrets import resolve
from workers.task_outcome import RunFailed, RunTimedOut, end_task
from workers.tasks import register_daemon_tasks

# --- how a run's task ends -------------------------------------------------------------------


def never_announced(exception: str) -> None:
    raise AssertionError(f"announced a revoke for a run that was not cancelled: {exception}")


def test_a_succeeded_run_ends_its_task_normally() -> None:
    end_task(Outcome("succeeded", rows_read=3, rows_written=3), announce_revoked=never_announced)


@pytest.mark.parametrize(
    ("state", "raised"),
    [pytest.param("failed", RunFailed, id="failed"), pytest.param("timed_out", RunTimedOut, id="timed-out")],
)
def test_a_run_that_failed_or_timed_out_raises_its_error_on_one_line(state: Any, raised: type) -> None:
    outcome = Outcome(state, error="pipeline orders: destination wh:\n  relation missing\n")

    with pytest.raises(RunFailed) as caught:
        end_task(outcome, announce_revoked=never_announced)

    assert type(caught.value) is raised
    assert str(caught.value) == "pipeline orders: destination wh: relation missing"
    # what Celery's task-failed event carries (safe_repr) and Flower shows as the exception
    assert repr(caught.value) == f"{raised.__name__}: pipeline orders: destination wh: relation missing"


def test_the_error_raised_holds_no_secret_the_daemon_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WH_PASSWORD", "s3cr3t-Value-42")
    resolve("${env:WH_PASSWORD}")
    outcome = Outcome("failed", error="pipeline orders: login as etl/s3cr3t-Value-42 refused")

    with pytest.raises(RunFailed) as caught:
        end_task(outcome, announce_revoked=never_announced)

    assert "s3cr3t" not in repr(caught.value) and "***" in str(caught.value)


def test_a_cancelled_run_announces_its_task_revoked_with_the_reason_and_ends_it_without_more() -> None:
    announced: list[str] = []

    with pytest.raises(Ignore):
        end_task(Outcome("cancelled", error="pipeline orders: cancelled"), announce_revoked=announced.append)

    assert announced == ["RunCancelled: pipeline orders: cancelled"]


def test_a_cancelled_run_whose_announcement_fails_still_ends_its_task() -> None:
    def broker_away(exception: str) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(Ignore):
        end_task(Outcome("cancelled", error="x"), announce_revoked=broker_away)


# --- which tasks send events -------------------------------------------------------------------


@pytest.fixture
def cp_app(tmp_path: Path) -> Celery:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'cp.db'}")
    app = make_celery(settings, url="memory://")
    register_cp_tasks(app, ControlPlane(settings, app))
    return app


@pytest.fixture
def daemon_app(tmp_path: Path) -> Celery:
    settings = Settings(home=tmp_path / "edge", broker_url="memory://")
    app = make_celery(settings, name="daemon-edge-1", url="memory://", daemon="edge-1")
    register_daemon_tasks(app, DaemonRuntime(settings, app, name="edge-1", labels={}))
    return app


def ours(app: Celery) -> dict[str, Any]:
    return {name: task for name, task in app.tasks.items() if name.startswith(("cp.", "daemon."))}


def test_every_housekeeping_task_sends_no_events_and_every_other_task_does(
    cp_app: Celery, daemon_app: Celery
) -> None:
    registered = {**ours(cp_app), **ours(daemon_app)}

    quiet = {name for name, task in registered.items() if not task.send_events}

    assert quiet == UNLISTED_TASKS & set(registered)
    assert {DAEMON_RUN_JOB, CP_RUN_EVENT} <= set(registered) - quiet
    # a task added later is either housekeeping (listed) or shown: nothing in between
    assert {CP_CHECK_DAEMON_HEALTH, DAEMON_PROBE, CP_PROBE_REPLY} <= quiet


def test_a_run_job_task_acknowledges_its_message_on_failure_and_expects_run_failures(
    daemon_app: Celery,
) -> None:
    run_job = daemon_app.tasks[DAEMON_RUN_JOB]

    assert (run_job.acks_late, run_job.acks_on_failure, run_job.reject_on_worker_lost) == (True, True, True)
    assert run_job.throws == (RunFailed,) and not getattr(run_job, "autoretry_for", ())


def test_a_malformed_job_is_refused_and_its_task_ends_failed_not_succeeded(daemon_app: Celery) -> None:
    result = daemon_app.tasks[DAEMON_RUN_JOB].apply(
        args=[{"v": 1, "run_key": "orders@1"}], task_id="orders@1"
    )

    assert result.state == "FAILURE"
    assert repr(result.result).startswith("JobRefused: ") and "\n" not in repr(result.result)


class SentEvents:
    """Stands in for the event dispatcher a producer sends ``task-sent`` with."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def publish(self, type: str, fields: dict[str, Any], producer: Any, **_: Any) -> None:
        self.sent.append((type, dict(fields)))


@pytest.mark.parametrize(
    ("task", "queue"),
    [
        pytest.param(CP_CHECK_DAEMON_HEALTH, CP_QUEUE, id="health-check-from-beat"),
        pytest.param(DAEMON_PROBE, daemon_queue("edge-1"), id="probe-from-a-worker"),
        pytest.param(CP_PROBE_REPLY, CP_QUEUE, id="probe-reply-from-a-daemon"),
    ],
)
def test_publishing_a_housekeeping_task_sends_no_task_sent_event(
    cp_app: Celery, task: str, queue: str
) -> None:
    events = SentEvents()

    cp_app.send_task(task, args=[{"v": 1}], queue=queue, argsrepr="x", event_dispatcher=events)

    assert cp_app.conf.task_send_sent_event is True
    assert events.sent == []


def test_publishing_a_job_sends_task_sent_with_its_argsrepr_only(cp_app: Celery) -> None:
    events = SentEvents()
    shown = "attempt 2/3 pipeline=orders daemon=edge-1 run=orders@1"

    cp_app.send_task(
        DAEMON_RUN_JOB,
        args=[{"v": 1, "password": "Hunter2-literal"}],
        queue=daemon_queue("edge-1"),
        task_id="orders@1#2",
        argsrepr=shown,
        kwargsrepr="{}",
        event_dispatcher=events,
    )

    [(kind, fields)] = events.sent
    assert (kind, fields["uuid"], fields["name"]) == ("task-sent", "orders@1#2", DAEMON_RUN_JOB)
    assert fields["args"] == shown
    assert "Hunter2" not in repr(fields)


# --- messages the guard refuses --------------------------------------------------------------


class ConsumerEvents:
    """Stands in for a worker's event dispatcher."""

    enabled = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, type: str, **fields: Any) -> None:
        self.sent.append((type, fields))


def refusing_consumer(monkeypatch: pytest.MonkeyPatch, events: ConsumerEvents) -> Any:
    """A guarded consumer's task handler whose checks refuse a malformed body; Celery never runs."""
    app = make_celery(Settings(), url="redis://127.0.0.1:1/0")
    for name in (CP_RUN_EVENT, CP_PROBE_REPLY):
        app.task(name=name, shared=False)(handled)
    monkeypatch.setattr(Consumer, "create_task_handler", lambda self, promise=None: never_called)
    consumer = object.__new__(app.conf.worker_consumer)
    consumer.app = app
    consumer.connection_errors = (ConnectionError,)
    consumer.event_dispatcher = events
    return consumer.create_task_handler()


def handled(payload: Any) -> None:
    """A task body; the refused messages never get here."""


def never_called(message: Any) -> None:
    raise AssertionError("a refused message reached Celery")


def test_a_message_the_guard_refuses_is_announced_rejected_so_flower_stops_showing_it_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = ConsumerEvents()
    handle = refusing_consumer(monkeypatch, events)
    message = FakeMessage(
        task=CP_RUN_EVENT, body=b'{"not": "a protocol-2 body"}', client=fakeredis.FakeRedis()
    )

    handle(message)

    assert message.acknowledged
    assert events.sent == [
        ("task-rejected", {"uuid": message.headers["id"], "name": CP_RUN_EVENT, "requeue": False})
    ]


def test_a_refused_housekeeping_message_is_not_announced(monkeypatch: pytest.MonkeyPatch) -> None:
    events = ConsumerEvents()
    handle = refusing_consumer(monkeypatch, events)

    handle(FakeMessage(task=CP_PROBE_REPLY, body=b"[]", client=fakeredis.FakeRedis()))

    assert events.sent == []
