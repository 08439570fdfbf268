"""The attacker check (issue 9): every malformed message we can think of, pushed onto both queues
while a real run moves thousands of rows, stops nothing: the run ends exact and every process still
consumes."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Stack, wait_for
from tests.poison import (
    DAEMON,
    Canary,
    assert_both_queues_still_consume,
    catalogue,
    push,
    sign_as_control_plane,
)

pytestmark = pytest.mark.integration

ROWS = 6_000
CONFIG = """
daemons:
  - name: {daemon}
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
    batch_size: 25
    daemon: {daemon}
"""


def make_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)")
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?)",
            [(i, f"c{i % 13}", i * 0.25, f"note {i} é ✓") for i in range(1, ROWS + 1)],
        )


def rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def test_malformed_messages_on_both_queues_during_a_run_stop_nothing(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url("sqlite")
    stack = make_stack(database_url)
    source, destination = stack.home / "shop.db", stack.home / "warehouse.db"
    make_source(source)
    stack.start("worker", "worker", "--concurrency", "2")
    stack.start("daemon", "daemon", "--name", DAEMON)
    wait_for(lambda: stack.daemon(DAEMON), timeout=90, what="the daemon's hello", stack=stack)
    config = stack.write_config(CONFIG.format(daemon=DAEMON, source=source, destination=destination))
    stack.cli("apply", "-f", str(config), check=True)
    wait_for(
        lambda: (d := stack.daemon(DAEMON)) and d["applied_config_version"] == 1,
        timeout=60,
        what="config version 1 applied",
        stack=stack,
    )
    sign_as_control_plane(stack.home)  # the well-formed ones reach the tasks' contracts
    canary = Canary(broker_url=stack.env["MYCELIAL_BROKER_URL"], database_url=database_url, daemon=DAEMON)

    run = subprocess.Popen(
        stack.cli_argv("run", "orders", "--wait", "--timeout", "300"),
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    queues = {"mycelial.cp": "cp.run_event", f"mycelial.daemon.{DAEMON}": "daemon.run_job"}
    guard_refuses = 0  # the rest are well-formed messages whose payload the task's contract refuses
    rounds = 0
    while rounds < 2 or (run.poll() is None and rounds < 6):  # for as long as the run lasts
        for queue, task in queues.items():
            for name, message in catalogue(queue, task):
                push(canary.client, queue, message)
                guard_refuses += not name.startswith(("body payload", "body huge payload"))
        rounds += 1
        time.sleep(0.5)

    out, err = run.communicate(timeout=320)
    assert run.returncode == 0, out + err + stack.logs()
    assert f"succeeded: {ROWS} rows written" in out
    assert rows(destination, "orders_copy") == rows(source, "orders")

    # every message was taken off its queue and kept (up to the dead-letter limit) with a reason;
    # the run can end while the last round is still being consumed, so wait for the consumers first
    def all_letters() -> list[dict[str, object]]:
        return [e for q in queues for e in canary.dead_letters(q)]

    wait_for(
        lambda: all(canary.client.llen(q) == 0 for q in queues) and len(all_letters()) >= guard_refuses,
        timeout=60,
        what=f"{guard_refuses} dead letters",
        stack=stack,
    )
    letters = all_letters()
    assert len(letters) == guard_refuses
    assert all(e["reason"] for e in letters)
    for queue in queues:
        assert canary.client.llen(queue) == 0
    assert stack.daemon("forged") is None  # no forged callback, chain or chord ran

    assert_both_queues_still_consume(stack, canary)
    again = stack.cli("run", "orders", "--wait", "--timeout", "120")
    assert again.returncode == 0, again.stdout + again.stderr + stack.logs()
    assert rows(destination, "orders_copy") == rows(source, "orders")
