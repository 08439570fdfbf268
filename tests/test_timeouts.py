"""A run's timeout stops the job, with real processes: the destination table is locked by another
session past the timeout, each attempt is stopped by its daemon and rolled back, and once the lock
is gone the last attempt loads the rows exactly once and the run's record says so."""

from __future__ import annotations

import json
import signal
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
    stack.cli("apply", "-f", str(config), check=True)  # declared first: only then online
    stack.start("daemon", "daemon", "--name", "edge-t")
    wait_for(
        lambda: (d := stack.daemon("edge-t")) and d["status"] == "online",
        timeout=90,
        what="daemon",
        stack=stack,
    )

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


FROZEN_ROWS = 20_000
FROZEN_TIMEOUT = 20
FROZEN_CONFIG = """
daemons: [{{name: edge-t}}]
connectors:
  - {{name: shop, kind: sqlite, path: {source}}}
  - {{name: wh, kind: sqlite, path: {destination}}}
pipelines:
  - name: orders
    source: {{connector: shop, table: orders}}
    destination: {{connector: wh, table: orders}}
    daemon: edge-t
    mode: append
    batch_size: 10
    timeout: {timeout}
    retries: {{max_attempts: 2, backoff: 1, max_backoff: 1}}
"""


def committed(path: Path) -> tuple[int, dict[str, Any] | None]:
    """Rows in the destination and the pipeline's committed state, read in one snapshot."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            count = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
            row = conn.execute("SELECT state FROM _mycelial_state WHERE pipeline = 'orders'").fetchone()
        conn.close()
    except sqlite3.Error:
        return 0, None
    return int(count), json.loads(row[0]) if row else None


def all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is in the stopped state (``T`` in /proc)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return bool(states) and all(state == "T" for state in states)


def test_an_attempt_frozen_past_its_timeout_and_ended_by_the_control_plane_commits_nothing_after(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url("sqlite")
    # a frozen daemon sends no heartbeats: keep it online, so that the timeout (not failover) ends the run
    stack = make_stack(database_url, timeout_grace="2", offline_after_missed="1000")
    source, destination = stack.home / "shop.db", stack.home / "wh.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?)", ((i, f"order-{i}") for i in range(1, FROZEN_ROWS + 1))
        )
    conn.close()
    config = stack.write_config(
        FROZEN_CONFIG.format(source=source, destination=destination, timeout=FROZEN_TIMEOUT)
    )
    stack.start("worker", "worker")
    stack.start("beat", "beat")
    stack.cli("apply", "-f", str(config), check=True)  # declared first: only then online
    daemon = stack.start("daemon", "daemon", "--name", "edge-t")
    wait_for(
        lambda: (d := stack.daemon("edge-t")) and d["status"] == "online",
        timeout=90,
        what="daemon",
        stack=stack,
    )
    key = json.loads(stack.cli("run", "orders", "--json", check=True).stdout)["run_key"]

    wait_for(
        lambda: 0 < committed(destination)[0] < FROZEN_ROWS, timeout=60, what="a partial load", stack=stack
    )
    daemon.send_signal(signal.SIGSTOP)
    try:
        # the signal is delivered asynchronously: count the rows once every thread has stopped
        wait_for(lambda: all_threads_stopped(daemon.pid), timeout=10, what="the daemon frozen", stack=stack)
        frozen_rows, frozen_state = committed(destination)
        assert frozen_state is not None and not frozen_state["complete"]
        # the control plane ends the attempt once its timeout and the grace have passed
        wait_for(
            lambda: attempts(database_url, key)[:1] and attempts(database_url, key)[0][1] == "timed_out",
            timeout=120,
            what="the control plane to end the frozen attempt",
            stack=stack,
        )
    finally:
        daemon.send_signal(signal.SIGCONT)
    log = stack.home / "daemon.log"
    wait_for(
        lambda: f"run {key} timed_out" in log.read_text(errors="replace"),
        timeout=60,
        what="the thawed daemon to stop the attempt",
        stack=stack,
    )
    # the thawed attempt is past its deadline: it committed nothing after the control plane ended it
    rows, state = committed(destination)
    assert state is not None and state["run_key"] == key and not state["complete"]
    assert rows == state["rows_loaded"] <= frozen_rows + 10  # at most the batch it was committing
    [first] = attempts(database_url, key)[:1]
    assert first[2] is not None and first[2].startswith(f"timed out after {FROZEN_TIMEOUT}s"), first

    # the retry resumes from the last committed batch and ends exact
    def finished() -> dict[str, Any] | None:
        run = next(r for r in stack.json("runs", "--pipeline", "orders")["runs"] if r["run_key"] == key)
        return run if run["state"] in ("succeeded", "failed", "timed_out") else None

    run = wait_for(finished, timeout=180, what="the retry to finish", stack=stack)
    assert (run["state"], run["attempt"]) == ("succeeded", 2), (run, stack.logs())
    with sqlite3.connect(destination) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]
    conn.close()
    assert ids == list(range(1, FROZEN_ROWS + 1))
