"""Live status with real processes: a stopped stack never leaves a dead daemon `online`, a running
run's rows per second reach `mycelial daemons --json`, and `mycelial status` exits 1 when a worker
or the broker is gone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from cp.db import make_engine
from cp.liveness import HEALTH_CHECK
from cp.models import Daemon, ProcessSeen, utcnow
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for
from tests.test_scheduling_faults import PIPELINE, PrivateRedis, config, make_source, private_redis  # noqa: F401

pytestmark = pytest.mark.integration

FAST = {"liveness_interval": "1"}  # seen within 3 s; the health check is stale after 5 s


def status(stack: Stack) -> tuple[int, dict[str, Any]]:
    result = stack.cli("status", "--json")
    return result.returncode, json.loads(result.stdout)


def wait_status_ok(stack: Stack) -> dict[str, Any]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (s := status(stack))[0] == 0 and s[1], timeout=60, what="mycelial status ok", stack=stack
    )


def rewind(database_url: str, *, heartbeat_s: float, checker_s: float) -> None:
    """Time passes for the stopped stack: its last heartbeat and health check move back."""
    engine = make_engine(normalize_database_url(database_url))
    now = utcnow()
    try:
        with Session(engine) as session:
            session.connection().execute(
                update(Daemon).values(last_heartbeat_at=now - timedelta(seconds=heartbeat_s))
            )
            session.connection().execute(
                update(ProcessSeen)
                .where(col(ProcessSeen.kind) == HEALTH_CHECK)
                .values(seen_at=now - timedelta(seconds=checker_s))
            )
            session.commit()
    finally:
        engine.dispose()


def start_edge(stack: Stack, *pipelines: str) -> None:
    stack.start("daemon", "daemon", "--name", "edge-f")
    stack.wait_heard_from("edge-f")
    stack.cli("apply", "-f", str(config(stack, *pipelines)), check=True)
    stack.wait_online("edge-f")


def test_with_the_whole_stack_stopped_a_daemon_silent_for_231s_is_shown_offline_and_stale_never_online(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url("sqlite")
    stack = make_stack(database_url, **FAST)
    make_source(stack.home / "shop.db")
    stack.start("worker", "worker")
    stack.start("beat", "beat")
    start_edge(stack, PIPELINE.format(name="orders", table="items", extra=""))

    up = wait_status_ok(stack)
    assert up["daemons"]["online"] == 1 and up["broker"]["reachable"] and up["database"]["reachable"]
    assert [w["alive"] for w in up["workers"]] == [True] and [b["alive"] for b in up["beat"]] == [True]

    def fresh_with_metrics() -> dict[str, Any] | None:
        daemon = stack.daemon("edge-f")
        return daemon if daemon and not daemon["status_stale"] and daemon["cpu_percent"] is not None else None

    live = wait_for(fresh_with_metrics, timeout=30, what="edge-f's metrics, checked lately", stack=stack)
    assert (live["status"], live["recorded_status"]) == ("online", "online")
    assert live["memory_mb"] > 0 and live["progress"] == []

    # a worker that dies without a word is not seen once its liveness row is older than 3 s
    stack.stop("worker", kill=True)
    down = wait_for(
        lambda: (s := status(stack))[0] == 1 and s[1], timeout=30, what="status failing without a worker"
    )
    # killed, it never said it stopped: its row just grows old
    assert any(
        p.startswith("no control-plane worker running (") and p.endswith(" over 3s)")
        for p in down["problems"]
    )

    stack.stop_all()
    rewind(database_url, heartbeat_s=231, checker_s=300)

    [daemon] = stack.json("daemons")["daemons"]
    assert daemon["status"] == "offline"
    assert daemon["recorded_status"] == "online"  # what the stopped checker last wrote
    assert re.fullmatch(r"no heartbeat for 23\ds", daemon["status_reason"]), daemon  # 231 s and the test's
    assert daemon["status_stale"] is True and daemon["checker_age_s"] >= 300
    table = stack.cli("daemons", check=True).stdout
    assert "offline (stale: checker last ran 5m ago)" in table and "online" not in table

    code, stopped = status(stack)
    assert code == 1
    assert stopped["daemons"]["offline"] == 1 and stopped["daemons"]["online"] == 0
    assert stopped["health_check"]["stale"] is True
    assert any(p.startswith("beat not running (the last one, ") for p in stopped["problems"]), stopped


def test_status_exits_1_while_the_broker_is_down(
    make_stack: Callable[..., Stack],
    make_database_url: Callable[[str], str],
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    stack = make_stack(make_database_url("sqlite"), **FAST)
    stack.env["MYCELIAL_BROKER_URL"] = private_redis.url
    stack.start("worker", "worker")
    stack.start("beat", "beat")
    wait_status_ok(stack)

    private_redis.stop()

    code, doc = status(stack)
    assert code == 1
    assert doc["broker"]["reachable"] is False and doc["database"]["reachable"] is True
    assert any(p.startswith("broker unreachable: ") for p in doc["problems"]), doc
    text = stack.cli("status")
    assert text.returncode == 1 and text.stdout.startswith("control plane: DOWN")


def test_a_running_runs_rows_per_second_reach_mycelial_daemons(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    stack = make_stack(make_database_url("sqlite"))
    make_source(stack.home / "shop.db", rows=200_000)
    stack.start("worker", "worker")
    slow = PIPELINE.format(
        name="slow", table="items", extra="    batch_size: 5\n    retries: {max_attempts: 1}"
    )
    start_edge(stack, slow)
    key = json.loads(stack.cli("run", "slow", "--json", check=True).stdout)["run_key"]

    def moving() -> dict[str, Any] | None:
        daemon = stack.daemon("edge-f")
        entries = [p for p in (daemon or {}).get("progress", []) if p["run_key"] == key]
        return entries[0] if entries and entries[0]["rows_per_second"] > 0 else None

    progress = wait_for(moving, timeout=60, what="the run's rows per second in mycelial daemons", stack=stack)
    assert progress["pipeline"] == "slow" and progress["attempt"] == 1
    assert 0 < progress["rows_written"] < 200_000
    assert "ROWS/S" in stack.cli("daemons", check=True).stdout
    stack.cli("cancel", key, check=True)  # 40,000 batches: it would take many seconds more


def test_status_of_a_control_plane_never_started_names_every_missing_part(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env.update(MYCELIAL_HOME=str(home), MYCELIAL_BROKER_URL="redis://127.0.0.1:1/0")
    result = subprocess.run(
        [sys.executable, "-m", "cp.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["database"]["reachable"] is True  # SQLite in the home
    assert doc["problems"][0].startswith("broker unreachable: ")
    assert doc["problems"][1:] == [
        "no control-plane worker running (never seen)",
        "beat not running (never seen)",
        "health checks not running: never ran (stale after 15s)",
    ]
    assert (doc["workers"], doc["beat"], doc["runs_last_hour"]) == ([], [], {})
