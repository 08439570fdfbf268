"""A run's history with real processes: its daemon is killed while it copies, the first attempt is
lost and the retry finishes; `mycelial runs show` tells both attempts apart with their daemon, rows
and error, lists the state changes in order, and `mycelial runs` counts the rows of both;
`mycelial events` has the same state changes and the daemon's status changes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, wait_for
from tests.slow_sqlite import make_slow_destination

pytestmark = pytest.mark.integration

ROWS = 15_000

CONFIG = """
daemons: [{{name: edge-r}}]
connectors:
  - {{name: shop, kind: sqlite, path: {source}}}
  - {{name: wh, kind: sqlite, path: {destination}}}
pipelines:
  - name: orders
    source: {{connector: shop, table: orders}}
    destination: {{connector: wh, table: orders}}
    daemon: edge-r
    mode: append
    batch_size: 10
    retries: {{max_attempts: 3, backoff: 1, max_backoff: 1}}
"""


def make_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", ((i, f"order-{i}") for i in range(1, ROWS + 1)))
    conn.close()


def landed(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            count = int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])
        conn.close()
    except sqlite3.Error:
        return 0
    return count


def test_a_run_lost_on_its_first_attempt_and_finished_by_the_retry_shows_both_attempts(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    stack = make_stack(make_database_url("sqlite"))
    source, destination = stack.home / "shop.db", stack.home / "wh.db"
    make_source(source)
    make_slow_destination(destination)
    config = stack.write_config(CONFIG.format(source=source, destination=destination))
    stack.start("worker", "worker")
    stack.start("beat", "beat")
    stack.cli("apply", "-f", str(config), check=True)
    stack.start("daemon", "daemon", "--name", "edge-r")
    stack.wait_online("edge-r", timeout=90)

    key = json.loads(stack.cli("run", "orders", "--json", check=True).stdout)["run_key"]

    def listed() -> dict[str, Any]:
        return next(r for r in stack.json("runs")["runs"] if r["run_key"] == key)

    # killed mid-copy, once the control plane has counted some of the first attempt's rows
    wait_for(
        lambda: listed()["rows_written"] > 0, timeout=60, what="the first attempt's progress", stack=stack
    )
    stack.stop("daemon", kill=True)
    assert 0 < landed(destination) < ROWS, "the copy ended before the daemon was killed"
    stack.start("daemon-again", "daemon", "--name", "edge-r")
    run = wait_for(
        lambda: (r := listed())["state"] not in ("scheduled", "queued", "running") and r,
        timeout=120,
        what="the retry to finish",
        stack=stack,
    )
    assert run["state"] == "succeeded" and run["attempt"] == 2, (run, stack.logs())

    shown = stack.cli("runs", "show", key, "--json", check=True)
    detail = json.loads(shown.stdout)
    first, second = detail["attempts"]
    assert (first["attempt"], first["daemon"], first["state"]) == (1, "edge-r", "lost")
    assert first["error"].startswith("lost: daemon edge-r "), first
    assert first["rows_written"] > 0 and first["rows_read"] >= first["rows_written"]
    assert (second["attempt"], second["daemon"], second["state"], second["error"]) == (
        2,
        "edge-r",
        "succeeded",
        None,
    )
    assert 0 < second["rows_written"] < ROWS  # it resumed where the first attempt's commits ended
    assert all(a["queued_at"] and a["started_at"] and a["finished_at"] for a in detail["attempts"])
    assert [(c["attempt"], c["to_state"]) for c in detail["state_changes"]] == [
        (1, "scheduled"),
        (1, "queued"),
        (1, "running"),
        (1, "retrying"),
        (2, "queued"),
        (2, "running"),
        (2, "succeeded"),
    ]
    assert landed(destination) == ROWS

    # the listing counts both attempts' rows, in JSON and in the table
    total = first["rows_written"] + second["rows_written"]
    assert (listed()["rows_written"], detail["run"]["rows_written"]) == (total, total)
    table = stack.cli("runs", check=True).stdout
    row = next(line for line in table.splitlines() if line.startswith(key))
    assert f" {total} " in f" {row} ", row
    text = stack.cli("runs", "show", key, check=True).stdout
    assert "retrying" in text and "edge-r" in text and first["error"] in text

    run_events = stack.json("events", "--run", key)["events"]
    assert [(e["kind"], e["attempt"], e["to"]) for e in run_events] == [
        ("run", c["attempt"], c["to_state"]) for c in detail["state_changes"]
    ]
    statuses = stack.json("events", "--kind", "status", "--daemon", "edge-r", "--since", "1h")["events"]
    assert statuses and statuses[0]["to"] == "online", statuses
    everything = stack.json("events", "--limit", "1000")["events"]
    assert {"run", "status"} <= {e["kind"] for e in everything}
    assert [e["at"] for e in everything] == sorted(e["at"] for e in everything)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("runs", "show", "orders@nothing"), 1, "error: no run 'orders@nothing'"),
        (("events", "--since", "yesterday"), 2, "error: --since: expected an age like 10m"),
        (("events", "--since", "1h", "--until", "2h"), 2, "error: --since ("),
        (("events", "--kind", "stauts"), 2, "error: --kind: no events of kind stauts"),
    ],
    ids=["unknown-run", "bad-since", "backwards-window", "unknown-kind"],
)
def test_bad_references_and_filters_are_one_line_errors(
    make_stack: Callable[..., Stack],
    make_database_url: Callable[[str], str],
    args: tuple[str, ...],
    code: int,
    says: str,
) -> None:
    stack = make_stack(make_database_url("sqlite"))
    result = stack.cli(*args)
    assert result.returncode == code, result
    assert result.stderr.startswith(says) and result.stderr.count("\n") == 1, result.stderr
