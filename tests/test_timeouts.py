"""A run's timeout stops the job, with real processes: the destination table is locked by another
session past the timeout, each attempt is stopped by its daemon and rolled back, and once the lock
is gone the last attempt loads the rows exactly once and the run's record says so."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, wait_for
from tests.movement import harness_mysql, harness_postgres

pytestmark = pytest.mark.integration

ROWS = 300
TIMEOUT = 5

CONFIG = """
daemons: [{{name: edge-t}}]
connectors:
  - {{name: shop, kind: sqlite, path: {source}}}
  - {destination}
pipelines:
  - name: orders
    source: {{connector: shop, table: orders}}
    destination: {{connector: wh, table: orders}}
    daemon: edge-t
    mode: append
    batch_size: 100
    timeout: {timeout}
    retries: {{max_attempts: 3, backoff: 1, max_backoff: 1}}
"""


class Destination:
    """A destination server with an ``orders`` table (no key: duplicates would show) and a way to
    lock that table from a session of its own."""

    connector: str

    def lock(self) -> Callable[[], None]:
        """Take an exclusive lock on ``orders`` now; the function returned lets it go."""
        raise NotImplementedError

    def ids(self) -> list[int]:
        raise NotImplementedError


class PostgresDestination(Destination):
    def __init__(self, harness: harness_postgres.Harness) -> None:
        self.harness = harness
        options = harness.options()
        self.connector = json.dumps({"name": "wh", "kind": "postgres", **options})
        harness.execute("CREATE TABLE orders (id BIGINT, name TEXT)")

    def lock(self) -> Callable[[], None]:
        conn = self.harness.connect()
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")

        def release() -> None:
            conn.execute("ROLLBACK")
            conn.close()

        return release

    def ids(self) -> list[int]:
        return [int(r[0]) for r in self.harness.execute("SELECT id FROM orders ORDER BY id")]


class MariadbDestination(Destination):
    def __init__(self, harness: harness_mysql.Harness) -> None:
        self.harness = harness
        options = harness.options()
        self.options = options
        wanted = {k: options[k] for k in ("host", "port", "user", "database")}
        self.connector = json.dumps({"name": "wh", "kind": "mysql", **wanted})
        harness.execute("CREATE TABLE orders (id BIGINT, name TEXT) ENGINE=InnoDB")

    def lock(self) -> Callable[[], None]:
        conn = harness_mysql.connect(self.options)
        with conn.cursor() as cursor:
            cursor.execute("LOCK TABLES orders WRITE")

        def release() -> None:
            with conn.cursor() as cursor:
                cursor.execute("UNLOCK TABLES")
            conn.close()

        return release

    def ids(self) -> list[int]:
        return [int(r[0]) for r in self.harness.execute("SELECT id FROM orders ORDER BY id")]


@pytest.fixture(params=["postgres", "mariadb"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    if request.param == "postgres":
        pg = harness_postgres.Harness(tmp_path)
        try:
            yield PostgresDestination(pg)
        finally:
            pg.cleanup()
    else:
        my = harness_mysql.Harness(tmp_path)
        try:
            yield MariadbDestination(my)
        finally:
            my.cleanup()


def make_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", ((i, f"order-{i}") for i in range(1, ROWS + 1)))
    conn.close()


def attempts(database_url: str, run_key: str) -> list[tuple[int, str, str | None]]:
    """(attempt, state, error) of each attempt of the run, from the control plane's database."""
    with sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30) as conn:
        rows = conn.execute(
            "SELECT attempt, state, error FROM runattempt WHERE run_key = ? ORDER BY attempt", (run_key,)
        ).fetchall()
    conn.close()
    return [(int(a), str(s).lower(), e) for a, s, e in rows]


def current_attempt(database_url: str, run_key: str) -> int:
    with sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30) as conn:
        row = conn.execute("SELECT attempt FROM run WHERE run_key = ?", (run_key,)).fetchone()
    conn.close()
    return int(row[0]) if row else 0


@contextmanager
def released_when(release: Callable[[], None], condition: Callable[[], bool]) -> Iterator[None]:
    """Keep a lock until ``condition`` holds (checked from a thread), and always let it go at exit."""
    done = threading.Event()
    lock = threading.Lock()
    released = False

    def let_go() -> None:
        nonlocal released
        with lock:
            if not released:
                released = True
                release()

    def watch() -> None:
        while not done.wait(0.25):
            try:
                reached = condition()
            except Exception:  # a busy database, say: ask again
                continue
            if reached:
                let_go()
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        let_go()


def test_a_run_whose_destination_table_is_locked_past_its_timeout_lands_its_rows_exactly_once(
    make_stack: Callable[..., Stack],
    make_database_url: Callable[[str], str],
    destination: Destination,
) -> None:
    database_url = make_database_url("sqlite")
    stack = make_stack(database_url)
    source = stack.home / "shop.db"
    make_source(source)
    config = stack.write_config(
        CONFIG.format(source=source, destination=destination.connector, timeout=TIMEOUT)
    )
    stack.start("worker", "worker")
    stack.start("beat", "beat")  # queues the retries after their backoff
    stack.start("daemon", "daemon", "--name", "edge-t")
    wait_for(
        lambda: (d := stack.daemon("edge-t")) and d["status"] == "online",
        timeout=90,
        what="daemon",
        stack=stack,
    )
    stack.cli("apply", "-f", str(config), check=True)

    def run_now(key: str) -> dict[str, Any]:
        return next(r for r in stack.json("runs", "--pipeline", "orders")["runs"] if r["run_key"] == key)

    release = destination.lock()
    started = json.loads(stack.cli("run", "orders", "--json", check=True).stdout)
    key = started["run_key"]
    # two attempts run into the lock and are stopped by the daemon; the third finds the table free
    with released_when(release, lambda: current_attempt(database_url, key) >= 3):
        run = wait_for(
            lambda: (r := run_now(key))["state"] in ("succeeded", "failed", "timed_out") and r,
            timeout=240,
            what="the run to finish",
            stack=stack,
        )
    assert (run["state"], run["attempt"], run["rows_written"]) == ("succeeded", 3, ROWS), (
        run,
        stack.logs(),
    )
    assert destination.ids() == list(range(1, ROWS + 1))

    [first, second, third] = attempts(database_url, key)
    for number, (attempt, state, error) in enumerate([first, second], start=1):
        assert (attempt, state) == (number, "timed_out"), (first, second, third)
        assert error is not None and error.startswith(f"pipeline orders: timed out after {TIMEOUT}s ("), error
    assert third[:2] == (3, "succeeded")

    # nothing of the stopped attempts commits later: a second run finds every row already there
    again = stack.cli("run", "orders", "--wait", "--json", "--timeout", "120")
    assert again.returncode == 0, again.stdout + again.stderr + stack.logs()
    assert json.loads(again.stdout)["rows_written"] == ROWS
    assert destination.ids() == sorted(list(range(1, ROWS + 1)) * 2)
