"""Admins ask live daemons through Celery's own CLI (`celery -A cp.admin`, a real subprocess on the
test Redis): the applied config, the runs running with their rows so far, versions and drivers;
`control mycelial_refresh_config` makes the daemon ask the control plane, which pushes its config
again. No answer holds a connector's options, and control-plane workers answer only Celery's own
commands."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.integration

DAEMON = "adm-1"
SECRET = "hunter2-admin-secret"
ROWS = 60_000

CONFIG = """
daemons: [{{name: {daemon}}}]
connectors:
  - {{name: shop, kind: sqlite, path: {source}}}
  - {{name: wh, kind: sqlite, path: {destination}}}
  - {{name: dw, kind: postgres, dsn: "postgresql://loader:${{env:ADMIN_TEST_PASSWORD}}@dw.internal:5432/dw"}}
pipelines:
  - name: orders
    source: {{connector: shop, table: orders}}
    destination: {{connector: wh, table: orders}}
    daemon: {daemon}
    mode: append
    batch_size: 10
  - name: to-dw
    source: {{connector: shop, table: orders}}
    destination: {{connector: dw, table: orders}}
    daemon: {daemon}
"""


def celery_admin(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cp.admin", *args, "--timeout", "10"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def answers(stack: Stack, kind: str, command: str, node: str) -> tuple[Any, str]:
    """The reply of ``node`` to ``celery {kind} {command} -d {node} --json``, and its raw text."""
    done = celery_admin(stack, kind, command, "-d", node, "--json")
    assert done.returncode == 0, f"{kind} {command}: {done.stderr}{done.stdout}"
    replies = json.loads(done.stdout)
    merged = {k: v for r in replies for k, v in r.items()} if isinstance(replies, list) else replies
    return merged[node], done.stdout


@contextmanager
def destination_locked_once_it_has_rows(path: Path) -> Iterator[threading.Event]:
    """Take the write lock of SQLite database ``path`` once its ``orders`` table has rows; the
    event tells it is held. Let go at exit."""
    locked, done = threading.Event(), threading.Event()

    def hold() -> None:
        while not done.wait(0.02):
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as reader:
                    rows = reader.execute("SELECT count(*) FROM orders").fetchone()[0]
                reader.close()
            except sqlite3.Error:  # not made yet, or busy
                continue
            if rows:
                break
        if done.is_set():
            return
        lock = sqlite3.connect(path, timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        locked.set()
        done.wait()
        lock.execute("ROLLBACK")
        lock.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield locked
    finally:
        done.set()
        thread.join(timeout=10)


def query(database: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database, timeout=30) as conn:
        rows = conn.execute(sql, args).fetchall()
    conn.close()
    return rows


def test_daemons_answer_the_mycelial_inspect_and_control_commands_with_nothing_secret(
    make_stack: Any, make_database_url: Any
) -> None:
    database_url = make_database_url("sqlite")
    database = Path(database_url.removeprefix("sqlite:///"))
    stack: Stack = make_stack(database_url)
    source, destination = stack.home / "shop.db", stack.home / "wh.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", ((i, f"order-{i}") for i in range(1, ROWS + 1)))
    conn.close()
    config = stack.write_config(CONFIG.format(daemon=DAEMON, source=source, destination=destination))
    stack.start("worker", "worker")
    stack.cli("apply", "-f", str(config), check=True)
    stack.start("daemon", "daemon", "--name", DAEMON, env={"ADMIN_TEST_PASSWORD": SECRET})
    wait_for(
        lambda: (d := stack.daemon(DAEMON)) and d["status"] == "online" and d["applied_config_version"] == 1,
        timeout=90,
        what="the daemon online with config 1",
        stack=stack,
    )
    node = f"daemon@{DAEMON}"
    said: list[str] = []

    applied, text = answers(stack, "inspect", "mycelial_config", node)
    said.append(text)
    [(desired_checksum,)] = query(database, "SELECT desired_checksum FROM daemon WHERE name = ?", DAEMON)
    assert applied["applied"]["version"] == 1
    assert applied["applied"]["checksum"] == desired_checksum
    assert sorted(applied["applied"]["pipeline_names"]) == ["orders", "to-dw"]

    software, text = answers(stack, "inspect", "mycelial_software", node)
    said.append(text)
    kinds = {c["kind"]: c for c in software["connectors"]}
    assert {"sqlite", "postgres", "mysql", "csv", "jsonl"} <= set(kinds)
    assert kinds["sqlite"]["driver"] == "ok" and kinds["postgres"]["driver"] == "ok"
    assert software["mycelial"]

    # the run's first batches land, then the test holds the destination's write lock: the run is
    # stuck mid-way (its sink waits up to 30 s) while the admin looks
    with destination_locked_once_it_has_rows(destination) as locked:
        run_key = json.loads(stack.cli("run", "orders", "--json", check=True).stdout)["run_key"]
        assert locked.wait(timeout=60), "the run never wrote its first batch\n" + stack.logs()
        runs, text = answers(stack, "inspect", "mycelial_runs", node)
        said.append(text)
    [run] = runs["running"]
    assert (run["run_key"], run["pipeline"], run["attempt"]) == (run_key, "orders", 1)
    assert 0 < run["rows_written"] < ROWS and run["rows_read"] >= run["rows_written"]
    assert run["started_at"] and run["seconds"] >= 0

    def run_ended() -> bool:
        runs, _ = answers(stack, "inspect", "mycelial_runs", node)
        return runs == {"running": [], "not_shown": 0}

    wait_for(run_ended, timeout=90, what="the run gone from mycelial_runs", stack=stack)
    assert stack.cli("runs", "--json", check=True).stdout.count('"succeeded"') == 1

    requested_before = query(database, "SELECT count(*) FROM daemonevent WHERE kind = 'config_requested'")
    assert requested_before == [(0,)]
    refreshed, text = answers(stack, "control", "mycelial_refresh_config", node)
    said.append(text)
    assert "asked the control plane" in refreshed["ok"]
    again, _ = answers(stack, "control", "mycelial_refresh_config", node)
    assert "asked less than 10s ago" in again["error"]  # a flood of commands is one request

    def config_pushed_again() -> bool:
        requested = query(database, "SELECT reason FROM daemonevent WHERE kind = 'config_requested'")
        daemon_log = (stack.home / "daemon.log").read_text(errors="replace")
        return len(requested) == 1 and daemon_log.count("applied config version 1") >= 2

    wait_for(config_pushed_again, timeout=30, what="the config asked for and applied again", stack=stack)
    [(reason,)] = query(database, "SELECT reason FROM daemonevent WHERE kind = 'config_requested'")
    assert "pushing version 1" in reason

    everything_said = "\n".join(said)
    for hidden in (SECRET, "ADMIN_TEST_PASSWORD", "dw.internal", str(source), str(destination)):
        assert hidden not in everything_said

    # control-plane workers answer Celery's own commands, and know nothing of these
    cp_node = f"cp@{socket.gethostname()}"
    pong, _ = answers(stack, "inspect", "ping", cp_node)
    assert pong == {"ok": "pong"}
    unknown, _ = answers(stack, "inspect", "mycelial_config", cp_node)
    assert "mycelial_config" in unknown["error"] and "applied" not in unknown
