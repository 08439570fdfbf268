"""Data lands effectively once: SIGKILL the daemon in the middle of a multi-batch run, start it
again, run again, and the destination equals the source exactly."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.integration

ROWS = 200_000

CONFIG = """
daemons: [{{name: edge-k}}]
connectors:
  - {{name: shop, kind: sqlite, path: {source}}}
  - {{name: warehouse, kind: sqlite, path: {destination}}}
pipelines:
  - name: events
    source: {{connector: shop, table: events}}
    destination: {{connector: warehouse, table: events}}
    daemon: edge-k
    batch_size: 500
{mode}
"""


def make_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE events"
            " (id INTEGER PRIMARY KEY, bucket INTEGER NOT NULL, payload TEXT, amount DECIMAL(12,2))"
        )
        # many rows share each bucket value, so cursor ties straddle batch boundaries
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?)",
            (
                (i, i // 777, f"event-{i}-{'x' * (i % 17)}", f"{i % 1000}.{i % 100:02d}")
                for i in range(1, ROWS + 1)
            ),
        )


def digest(path: Path) -> tuple[int, str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT id, bucket, payload, CAST(amount AS TEXT) FROM events ORDER BY id"
        ).fetchall()
    return len(rows), hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def committed_state(path: Path) -> dict[str, object] | None:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT state FROM _mycelial_state WHERE pipeline = 'events'").fetchone()
    except sqlite3.Error:
        return None
    return json.loads(row[0]) if row else None


@pytest.mark.parametrize("mode", ["append", "incremental"])
def test_a_daemon_killed_mid_run_neither_loses_nor_duplicates_rows(
    make_stack, make_database_url, mode: str
) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = make_stack(make_database_url("sqlite"))
    source, destination = stack.home / "shop.db", stack.home / "warehouse.db"
    make_source(source)
    mode_lines = (
        "    mode: append" if mode == "append" else "    mode: incremental\n    cursor_column: bucket"
    )
    config = stack.write_config(CONFIG.format(source=source, destination=destination, mode=mode_lines))

    stack.start("worker", "worker")
    daemon = stack.start("daemon", "daemon", "--name", "edge-k")
    stack.wait_heard_from("edge-k")  # undeclared until the configuration is applied
    stack.cli("apply", "-f", str(config), check=True)
    stack.wait_online("edge-k")
    killed_run = json.loads(stack.cli("run", "events", "--json", check=True).stdout)["run_key"]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = committed_state(destination)
        if state and 0 < int(state["rows_loaded"]) and not state["complete"]:  # type: ignore[call-overload]
            break
        time.sleep(0.005)
    else:
        pytest.fail(f"never saw a partly loaded run\n{stack.logs()}")
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=10)
    partial = committed_state(destination)
    assert partial is not None and not partial["complete"]
    loaded_before_kill = digest(destination)[0]
    assert 0 < loaded_before_kill < ROWS

    # until the daemon is back the killed run still looks running: a new run waits for room
    held = json.loads(stack.cli("run", "events", "--json", check=True).stdout)
    assert (held["state"], held["daemon"]) == ("scheduled", None), held
    assert held["error"] == "waiting: the pipeline's previous run is still active (overlap: skip)"
    assert stack.cli("cancel", held["run_key"]).returncode == 0

    stack.procs.pop("daemon")
    stack.start("daemon", "daemon", "--name", "edge-k")
    # restarted at once, the daemon never looks offline: its hello tells the control plane that the
    # killed run is gone (lost, retried), which makes room for this run under overlap skip
    again = stack.cli("run", "events", "--wait", "--timeout", "120")
    assert again.returncode == 0, again.stderr + stack.logs()
    killed = next(r for r in stack.json("runs", "--pipeline", "events")["runs"] if r["run_key"] == killed_run)
    assert (killed["state"], killed["attempt"]) == ("scheduled", 2), killed  # no beat here to queue it

    assert digest(destination) == digest(source)
    final = committed_state(destination)
    assert final is not None and final["complete"]


def test_progress_shows_while_running_and_cancel_stops_between_batches_leaving_the_old_table(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
) -> None:
    stack: Stack = make_stack(make_database_url("sqlite"))
    source, destination = stack.home / "shop.db", stack.home / "warehouse.db"
    make_source(source)
    config = CONFIG.format(source=source, destination=destination, mode="    mode: replace")
    stack.start("worker", "worker")
    stack.start("daemon", "daemon", "--name", "edge-k")
    stack.wait_heard_from("edge-k")  # undeclared until the configuration is applied
    stack.cli("apply", "-f", str(stack.write_config(config)), check=True)
    stack.wait_online("edge-k")
    assert stack.cli("run", "events", "--wait", "--timeout", "120").returncode == 0
    before = digest(destination)

    with sqlite3.connect(source) as conn:
        conn.execute("DELETE FROM events WHERE id % 2 = 0")
    slow = config.replace("batch_size: 500", "batch_size: 3")  # 33,000 commits: many seconds long
    stack.cli("apply", "-f", str(stack.write_config(slow)), check=True)
    started = json.loads(stack.cli("run", "events", "--json", check=True).stdout)

    def in_progress() -> dict[str, object] | None:
        run = next(r for r in stack.json("runs")["runs"] if r["run_key"] == started["run_key"])
        return run if run["state"] == "running" and run["rows_written"] > 0 else None

    running = wait_for(in_progress, timeout=60, what="a progress report while running", stack=stack)
    assert 0 < int(running["rows_written"]) < ROWS  # type: ignore[call-overload]

    cancelled = stack.cli("cancel", started["run_key"])
    assert cancelled.returncode == 0, cancelled.stderr
    run = wait_for(
        lambda: (
            (r := next(r for r in stack.json("runs")["runs"] if r["run_key"] == started["run_key"]))
            and r["state"] == "cancelled"
            and r
        ),
        timeout=60,
        what="the run to end cancelled",
        stack=stack,
    )
    assert "cancelled between batches" in run["error"]
    assert digest(destination) == before
    assert stack.cli("cancel", started["run_key"]).returncode == 2
