"""Specification of placement: which daemon a pipeline's run goes to."""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import Session

from cp.models import Daemon, DaemonStatus, Pipeline, Run, RunState
from cp.placement import choose_daemon

BERLIN = {"site": "berlin"}


def test_a_pinned_pipeline_waits_while_its_daemon_is_offline_and_goes_to_it_otherwise(
    session: Session, add_daemon: Callable[..., Daemon], add_pipeline: Callable[..., Pipeline]
) -> None:
    add_daemon("edge-1", status=DaemonStatus.OFFLINE)
    add_daemon("edge-2", status=DaemonStatus.DEGRADED)

    assert choose_daemon(session, add_pipeline("orders", daemon="edge-1")) is None
    assert choose_daemon(session, add_pipeline("stock", daemon="edge-2")) == "edge-2"
    assert choose_daemon(session, add_pipeline("never-seen", daemon="edge-9")) == "edge-9"


def test_the_online_matching_daemon_with_fewest_active_runs_is_chosen(
    session: Session,
    add_daemon: Callable[..., Daemon],
    add_pipeline: Callable[..., Pipeline],
    add_run: Callable[..., Run],
) -> None:
    add_daemon("edge-a", labels=BERLIN)
    add_daemon("edge-b", labels=BERLIN)
    add_run("a1", daemon="edge-a", state=RunState.RUNNING)
    add_run("a2", daemon="edge-a", state=RunState.QUEUED)
    add_run("b1", daemon="edge-b", state=RunState.QUEUED)

    assert choose_daemon(session, add_pipeline("stock", labels=BERLIN)) == "edge-b"


def test_finished_runs_do_not_count_as_load(
    session: Session,
    add_daemon: Callable[..., Daemon],
    add_pipeline: Callable[..., Pipeline],
    add_run: Callable[..., Run],
) -> None:
    add_daemon("edge-a", labels=BERLIN)
    add_daemon("edge-b", labels=BERLIN)
    add_run("a1", daemon="edge-a", state=RunState.SUCCEEDED)
    add_run("a2", daemon="edge-a", state=RunState.FAILED)
    add_run("b1", daemon="edge-b", state=RunState.RUNNING)

    assert choose_daemon(session, add_pipeline("stock", labels=BERLIN)) == "edge-a"


def test_equal_load_is_broken_by_name(
    session: Session, add_daemon: Callable[..., Daemon], add_pipeline: Callable[..., Pipeline]
) -> None:
    add_daemon("edge-b", labels=BERLIN)
    add_daemon("edge-a", labels=BERLIN)

    assert choose_daemon(session, add_pipeline("stock", labels=BERLIN)) == "edge-a"


def test_offline_degraded_undeclared_and_non_matching_daemons_are_not_chosen(
    session: Session,
    add_daemon: Callable[..., Daemon],
    add_pipeline: Callable[..., Pipeline],
    add_run: Callable[..., Run],
) -> None:
    add_daemon("edge-busy", labels=BERLIN)
    add_run("busy", daemon="edge-busy", state=RunState.RUNNING)
    add_daemon("edge-offline", labels=BERLIN, status=DaemonStatus.OFFLINE)
    add_daemon("edge-degraded", labels=BERLIN, status=DaemonStatus.DEGRADED)
    add_daemon("edge-stranger", labels=BERLIN, declared=False)
    add_daemon("edge-paris", labels={"site": "paris"})

    assert choose_daemon(session, add_pipeline("stock", labels=BERLIN)) == "edge-busy"


def test_no_daemon_is_chosen_when_none_matching_is_online(
    session: Session, add_daemon: Callable[..., Daemon], add_pipeline: Callable[..., Pipeline]
) -> None:
    add_daemon("edge-a", labels=BERLIN, status=DaemonStatus.OFFLINE)
    add_daemon("edge-paris", labels={"site": "paris"})

    assert choose_daemon(session, add_pipeline("stock", labels=BERLIN)) is None
