"""What daemons answer to `celery inspect mycelial_*`: bounded, and nothing a connector's options
hold (the remote-control channel is not signed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import ModuleType, SimpleNamespace

from celery.worker.control import Panel

from cp.protocol import ApplyConfig, ConnectorSpec, DesiredState, PipelineSpec
from workers.admin_commands import (
    CONTROL_REFRESH_CONFIG,
    INSPECT_CONFIG,
    INSPECT_RUNS,
    INSPECT_SOFTWARE,
    register_admin_commands,
)
from workers.admin_reports import (
    MAX_PIPELINES_SHOWN,
    MAX_RUNS_SHOWN,
    RefreshLimit,
    config_report,
    runs_report,
    software_report,
)
from workers.jobs import Outcome, Report
from workers.movement.registry import CONNECTORS
from workers.progress import RunBoard

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET_OPTIONS = {"dsn": "postgresql://loader:${env:PG_PASSWORD}@db.internal:5432/dw", "password": "hunter2"}


def applied_config(pipelines: int) -> ApplyConfig:
    source = ConnectorSpec(name="dw", kind="postgres", options=SECRET_OPTIONS)
    destination = ConnectorSpec(name="wh", kind="sqlite", options={"path": "/srv/private/wh.db"})
    return ApplyConfig(
        version=7,
        checksum="ab" * 32,
        state=DesiredState(
            daemon="edge-1",
            pipelines=[
                PipelineSpec(name=f"p{i}", source=source, destination=destination, destination_table="t")
                for i in range(pipelines)
            ],
        ),
    )


def test_the_config_report_gives_version_checksum_and_pipeline_names_but_no_connector_option() -> None:
    report = config_report(applied_config(2), applied_at=NOW)
    assert report == {
        "applied": {
            "version": 7,
            "checksum": "ab" * 32,
            "applied_at": NOW.isoformat(),
            "pipelines": 2,
            "pipeline_names": ["p0", "p1"],
        }
    }
    text = json.dumps(report)
    for hidden in ("hunter2", "PG_PASSWORD", "db.internal", "/srv/private"):
        assert hidden not in text


def test_the_config_report_of_a_daemon_with_no_config_says_so() -> None:
    assert config_report(None, applied_at=None) == {"applied": None}


def test_the_config_report_lists_at_most_a_bounded_number_of_pipeline_names() -> None:
    report = config_report(applied_config(MAX_PIPELINES_SHOWN + 20), applied_at=NOW)["applied"]
    assert report["pipelines"] == MAX_PIPELINES_SHOWN + 20
    assert len(report["pipeline_names"]) == MAX_PIPELINES_SHOWN


def test_the_run_board_follows_each_job_from_start_through_its_progress_to_its_end() -> None:
    board = RunBoard()
    sent: list[Outcome] = []
    board.started(task_id="t2", run_key="r2", pipeline="b", attempt=2, now=NOW + timedelta(seconds=5))
    board.started(task_id="t1", run_key="r1", pipeline="a", attempt=1, now=NOW)
    report = Report(sent.append, clock=lambda: 0.0, on_rows=board.rows_of("t1"))
    report.progress(100, 50)
    report.progress(300, 200)
    assert sent == []  # progress events are throttled; the board sees every batch

    runs = runs_report(board.snapshot(), now=NOW + timedelta(seconds=10))
    assert runs == {
        "running": [
            {
                "run_key": "r1",
                "pipeline": "a",
                "attempt": 1,
                "started_at": NOW.isoformat(),
                "seconds": 10.0,
                "rows_read": 300,
                "rows_written": 200,
            },
            {
                "run_key": "r2",
                "pipeline": "b",
                "attempt": 2,
                "started_at": (NOW + timedelta(seconds=5)).isoformat(),
                "seconds": 5.0,
                "rows_read": 0,
                "rows_written": 0,
            },
        ],
        "not_shown": 0,
    }
    board.ended("t1")
    report.progress(400, 400)  # a late report adds nothing
    assert [r.run_key for r in board.snapshot()] == ["r2"]


def test_the_runs_report_shows_a_bounded_number_of_runs_and_counts_the_rest() -> None:
    board = RunBoard()
    for i in range(MAX_RUNS_SHOWN + 3):
        board.started(task_id=f"t{i}", run_key=f"r{i}", pipeline="p", attempt=1, now=NOW)
    report = runs_report(board.snapshot(), now=NOW)
    assert (len(report["running"]), report["not_shown"]) == (MAX_RUNS_SHOWN, 3)


def test_the_software_report_lists_every_connector_kind_with_its_driver_state() -> None:
    def load(module: str) -> ModuleType:
        if module.endswith(".postgres"):
            raise ModuleNotFoundError("No module named 'psycopg' (from /home/someone/venv)", name="psycopg")
        if module.endswith(".mysql"):
            raise RuntimeError("driver broke at /home/someone/secret-path")
        return ModuleType(module)

    report = software_report(load=load)
    assert {"mycelial", "python", "celery", "kombu"} <= set(report)
    by_kind = {c["kind"]: c for c in report["connectors"]}
    assert set(by_kind) == set(CONNECTORS)
    assert by_kind["sqlite"] == {"kind": "sqlite", "source": True, "sink": True, "driver": "ok"}
    assert by_kind["csv"] == {"kind": "csv", "source": True, "sink": False, "driver": "ok"}
    assert by_kind["postgres"] == {
        "kind": "postgres",
        "source": True,
        "sink": True,
        "driver": "missing",
        "missing_module": "psycopg",
        "install": "pip install 'mycelial-control-plane[postgres]'",
    }
    assert by_kind["mysql"]["driver"] == "broken"
    assert "/home/someone" not in json.dumps(report)


def test_the_software_report_of_this_installation_finds_the_bundled_drivers() -> None:
    by_kind = {c["kind"]: c for c in software_report()["connectors"]}
    assert by_kind["sqlite"]["driver"] == "ok"


def test_a_config_refresh_may_go_at_most_once_per_interval() -> None:
    limit = RefreshLimit(every=10.0)
    assert limit.wait_left(now=100.0) == 0.0
    assert limit.wait_left(now=101.0) == 9.0
    assert limit.wait_left(now=109.5) == 0.5
    assert limit.wait_left(now=110.0) == 0.0
    assert limit.wait_left(now=110.1) > 9.8


def test_the_commands_are_registered_once_and_answer_nothing_in_a_process_without_a_daemon() -> None:
    register_admin_commands()
    register_admin_commands()
    names = (INSPECT_CONFIG, INSPECT_RUNS, INSPECT_SOFTWARE, CONTROL_REFRESH_CONFIG)
    assert [Panel.meta[n].type for n in names] == ["inspect", "inspect", "inspect", "control"]
    state = SimpleNamespace(app=SimpleNamespace(), hostname="cp@host")
    for name in names:
        # extra arguments a forged command might carry are ignored
        assert Panel.data[name](state, anything="x" * 10_000) == {"error": "not a mycelial daemon"}
