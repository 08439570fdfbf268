"""End to end through real processes: apply a config, run a pipeline, watch daemons, fire schedules.

Runs on SQLite and on PostgreSQL as the control-plane database (PostgreSQL must run in CI)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cp.celery_app import make_celery
from cp.db import make_engine
from cp.models import DaemonEvent
from cp.settings import Settings, normalize_database_url
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.integration

CONFIG = """
daemons:
  - name: {daemon}
    labels: {{site: berlin}}
connectors:
  - name: shop
    kind: sqlite
    path: {source}
  - name: warehouse
    kind: sqlite
    path: {destination}
pipelines:
  - name: orders
    source: {{connector: shop, table: orders}}
    destination: {{connector: warehouse, table: orders_copy}}
    batch_size: 7
    daemon: {daemon}
  - name: broken
    source: {{connector: shop, table: no_such_table}}
    destination: {{connector: warehouse, table: broken_copy}}
    labels: {{site: berlin}}
{extra}
"""


def make_source(path: Path, rows: int = 50) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL)")
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?)", [(i, f"c{i % 7}", i * 1.5) for i in range(1, rows + 1)]
        )


def table_rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def start_daemon_stack(stack: Stack, daemon: str) -> None:
    stack.start("worker", "worker", "--concurrency", "2")
    stack.start("daemon", "daemon", "--name", daemon, "--labels", "site=berlin")
    stack.wait_heard_from(daemon)  # undeclared until the test applies its configuration


def config_text(stack: Stack, daemon: str, extra: str = "") -> str:
    return CONFIG.format(
        daemon=daemon,
        source=stack.home / "shop.db",
        destination=stack.home / "warehouse.db",
        extra=extra,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, make_database_url) -> str:  # type: ignore[no-untyped-def]
    return make_database_url(request.param)  # type: ignore[no-any-return]


def test_apply_then_run_moves_rows_and_a_failing_run_exits_1(make_stack, database_url: str) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = make_stack(database_url)
    make_source(stack.home / "shop.db")
    start_daemon_stack(stack, "edge-1")

    applied = stack.cli("apply", "-f", str(stack.write_config(config_text(stack, "edge-1"))))
    assert applied.returncode == 0, applied.stderr
    assert "+ pipeline orders" in applied.stdout
    assert "pushed version 1 to daemon edge-1" in applied.stdout
    stack.wait_online("edge-1")

    def config_acknowledged() -> bool:
        d = stack.daemon("edge-1")
        return bool(d and d["applied_config_version"] == 1 and d["desired_config_version"] == 1)

    wait_for(config_acknowledged, timeout=30, what="config version 1 applied by edge-1", stack=stack)
    assert (stack.home / "daemons" / "edge-1" / "applied-config.json").exists()

    ok = stack.cli("run", "orders", "--wait", "--timeout", "60")
    assert ok.returncode == 0, ok.stderr + stack.logs()
    assert "succeeded: 50 rows written" in ok.stdout
    assert table_rows(stack.home / "warehouse.db", "orders_copy") == table_rows(
        stack.home / "shop.db", "orders"
    )

    failed = stack.cli("run", "broken", "--wait", "--timeout", "60")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "no such table: no_such_table" in failed.stderr
    assert "pipeline broken" in failed.stderr

    runs = {r["pipeline"]: r for r in stack.json("runs")["runs"]}
    assert runs["orders"]["state"] == "succeeded"
    assert runs["orders"]["rows_written"] == 50
    assert runs["orders"]["daemon"] == "edge-1"
    assert runs["broken"]["state"] == "failed"
    assert "no such table" in runs["broken"]["error"]

    pipelines = {p["name"]: p for p in stack.json("pipelines")["pipelines"]}
    assert pipelines["orders"]["last_run_state"] == "succeeded"
    assert pipelines["broken"]["placement"] == {"labels": {"site": "berlin"}}


def test_a_bad_config_file_is_rejected_whole_with_exit_2(make_stack, database_url: str) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = make_stack(database_url)
    bad = config_text(stack, "edge-1", extra='    schedule: "61 * * * *"').replace(
        "connector: warehouse, table: broken_copy", "connector: nowhere, table: broken_copy"
    )
    result = stack.cli("apply", "-f", str(stack.write_config(bad)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any('pipelines[1].schedule: invalid cron "61 * * * *"' in line for line in lines), result.stderr
    assert any("pipelines[1].destination.connector: unknown connector 'nowhere'" in line for line in lines)
    assert "Traceback" not in result.stderr
    assert stack.json("config", "history")["versions"] == []
    assert stack.json("pipelines")["pipelines"] == []


def test_a_stopped_daemon_shows_offline_and_a_restarted_one_gets_its_config(
    make_stack, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = make_stack(database_url)
    start_daemon_stack(stack, "edge-2")
    stack.start("beat", "beat")
    stack.cli("apply", "-f", str(stack.write_config(config_text(stack, "edge-2"))), check=True)
    stack.wait_online("edge-2")

    stack.stop("daemon", kill=True)
    offline = wait_for(
        lambda: (d := stack.daemon("edge-2")) and d["status"] == "offline" and d,
        timeout=30,
        what="edge-2 offline after missed heartbeats",
        stack=stack,
    )
    assert offline["last_heartbeat_age_s"] >= 3

    # the config moves on while the daemon is away; on return it says hello and gets the new state
    changed = config_text(stack, "edge-2").replace("batch_size: 7", "batch_size: 9")
    stack.cli("apply", "-f", str(stack.write_config(changed)), check=True)
    stack.start("daemon", "daemon", "--name", "edge-2", "--labels", "site=berlin")
    wait_for(
        lambda: (
            (d := stack.daemon("edge-2")) and d["status"] == "online" and d["applied_config_version"] == 2
        ),
        timeout=60,
        what="edge-2 back online with config version 2",
        stack=stack,
    )


def test_a_per_second_schedule_is_fired_by_beat_once_per_fire_time(make_stack, database_url: str) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = make_stack(database_url)
    make_source(stack.home / "shop.db", rows=5)
    start_daemon_stack(stack, "edge-3")
    stack.start("beat", "beat")
    every_two_seconds = """  - name: ticking
    source: {connector: shop, table: orders}
    destination: {connector: warehouse, table: ticking_copy}
    daemon: edge-3
    schedule: "* * * * * */2"
"""
    stack.cli(
        "apply",
        "-f",
        str(stack.write_config(config_text(stack, "edge-3", extra=every_two_seconds))),
        check=True,
    )
    stack.wait_online("edge-3")

    def scheduled_successes() -> list[dict[str, object]]:
        runs = stack.json("runs", "--pipeline", "ticking")["runs"]
        done = [r for r in runs if r["trigger"] == "schedule" and r["state"] == "succeeded"]
        return done if len(done) >= 3 else []

    done = wait_for(scheduled_successes, timeout=60, what="three scheduled runs", stack=stack)
    keys = [r["run_key"] for r in done]
    assert len(keys) == len(set(keys))
    fire_seconds = sorted(int(str(r["scheduled_for"])[17:19]) for r in done)
    assert all(second % 2 == 0 for second in fire_seconds)
    assert table_rows(stack.home / "warehouse.db", "ticking_copy") == table_rows(
        stack.home / "shop.db", "orders"
    )


def test_malformed_messages_are_rejected_and_workers_keep_working(make_stack, database_url: str) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = make_stack(database_url)
    make_source(stack.home / "shop.db", rows=3)
    start_daemon_stack(stack, "edge-4")
    stack.cli("apply", "-f", str(stack.write_config(config_text(stack, "edge-4"))), check=True)
    stack.wait_online("edge-4")

    app = make_celery(Settings(home=stack.home), url=stack.env["MYCELIAL_BROKER_URL"])
    app.send_task(
        "cp.heartbeat", args=[{"v": 1, "name": "edge-4", "sent_at": "not a time"}], queue="mycelial.cp"
    )
    app.send_task("cp.run_event", args=["just a string"], queue="mycelial.cp")
    app.send_task("daemon.run_job", args=[{"v": 99}], queue="mycelial.daemon.edge-4")

    engine = make_engine(normalize_database_url(database_url))

    def rejections() -> list[DaemonEvent]:
        with Session(engine) as session:
            found = list(session.exec(select(DaemonEvent).where(DaemonEvent.kind == "message_rejected")))
        return found if len(found) >= 2 else []

    events = wait_for(rejections, timeout=30, what="two rejected-message events", stack=stack)
    reasons = " | ".join(e.reason for e in events)
    assert "cp.heartbeat: Heartbeat: sent_at" in reasons
    assert "cp.run_event: RunEvent: payload must be an object" in reasons
    engine.dispose()

    time.sleep(0.5)
    assert "rejected daemon.run_job message" in (stack.home / "daemon.log").read_text()

    # admins reach the daemon with Celery's own CLI through the cp.admin entry point
    pong = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "cp.admin",
            "inspect",
            "ping",
            "-d",
            "daemon@edge-4",
            "--json",
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pong.returncode == 0, pong.stderr
    assert "daemon@edge-4" in pong.stdout
    ok = stack.cli("run", "orders", "--wait", "--timeout", "60")
    assert ok.returncode == 0, ok.stderr + stack.logs()
