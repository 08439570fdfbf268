"""Flower tells the truth, with real processes: a control-plane worker, beat, a daemon and Flower
itself (``mycelial flower``, behind its basic auth). A run that fails ends its ``daemon.run_job``
task FAILURE with its scrubbed error, one that succeeds SUCCESS, a cancelled one REVOKED; each
attempt of a retried run is a task of its own that says ``attempt N/M``; and after seconds of
health checks, probes and heartbeats no housekeeping task is listed, or even counted, by Flower.
The second test finds the failed run on the Failed tab of Flower's page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cp.celery_app import make_celery, unacked_keys
from cp.cli.flower_server import CREDENTIALS_FILE
from cp.embedded_redis import redis_client
from cp.messaging.install import guard_of
from cp.messaging.unlisted import UNLISTED_TASKS
from cp.protocol import CP_QUEUE, CP_RUN_EVENT, DAEMON_RUN_JOB
from cp.settings import Settings
from tests.conftest import IN_CI, Broker, Stack, wait_for
from tests.test_up import free_port

pytestmark = pytest.mark.integration

DAEMON = "edge-f"
WH_SECRET = "wh-Passw0rd-9532"  # in the DSN of a warehouse that does not answer
SLOW_ROWS = 200_000
FORGED_ID = "forged-run-event-1"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_COPY = Path("/work/notes/flower-failed.png")

CONFIG = """
daemons: [{{name: {daemon}}}]
connectors:
  - {{name: shop, kind: sqlite, path: {shop}}}
  - {{name: wh, kind: sqlite, path: {wh}}}
  - {{name: ghost, kind: sqlite, path: {ghost}}}
  - {{name: wh-down, kind: postgres, dsn: "postgresql://loader:${{env:WH_PASSWORD}}@127.0.0.1:{closed}/dw"}}
pipelines:
  - name: orders-ok
    source: {{connector: shop, table: orders}}
    destination: {{connector: wh, table: orders}}
    daemon: {daemon}
    retries: {{max_attempts: 1}}
  - name: orders-broken
    source: {{connector: ghost, table: orders}}
    destination: {{connector: wh, table: broken}}
    daemon: {daemon}
    retries: {{max_attempts: 3}}
  - name: orders-retried
    source: {{connector: shop, table: orders}}
    destination: {{connector: wh-down, table: orders}}
    daemon: {daemon}
    retries: {{max_attempts: 2, backoff: 1, max_backoff: 1}}
  - name: orders-slow
    source: {{connector: shop, table: big}}
    destination: {{connector: wh, table: big}}
    daemon: {daemon}
    batch_size: 10
    retries: {{max_attempts: 1}}
"""


@dataclass
class Observed:
    """The stack, its Flower and the runs whose tasks Flower should show."""

    stack: Stack
    port: int
    auth: tuple[str, str]
    runs: dict[str, dict[str, Any]]  # pipeline -> the run as `mycelial runs --json` shows it
    tmp: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", auth=self.auth, timeout=10)

    def tasks(self) -> dict[str, dict[str, Any]]:
        response = self.get("/api/tasks")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]


def make_shop(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", ((i, f"order-{i}") for i in range(1, 51)))
        conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany("INSERT INTO big VALUES (?, ?)", ((i, f"row-{i}") for i in range(1, SLOW_ROWS + 1)))
    conn.close()


def start_flower(stack: Stack, port: int) -> None:
    log = open(stack.home / "flower.log", "wb")  # noqa: SIM115 (the process keeps it)
    stack.procs["flower"] = subprocess.Popen(
        [sys.executable, "-m", "cp.cli", "flower", "--port", str(port)],
        env=stack.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def the_run(stack: Stack, pipeline: str) -> dict[str, Any]:
    return next(r for r in stack.json("runs", "--pipeline", pipeline)["runs"])  # type: ignore[no-any-return]


def run_to_the_end(stack: Stack, pipeline: str, *, exit_code: int) -> dict[str, Any]:
    result = stack.cli("run", pipeline, "--wait", "--json", "--timeout", "90")
    assert result.returncode == exit_code, result.stdout + result.stderr + stack.logs()
    return the_run(stack, pipeline)


def probed_since(stack: Stack, since: datetime) -> bool:
    daemon = stack.daemon(DAEMON)
    replied = daemon and daemon["last_probe_reply_at"]
    return bool(replied) and datetime.fromisoformat(replied) > since


def send_unsigned_run_event(stack: Stack, *, task_id: str) -> None:
    """A run event no daemon signed, as a forger without a key would send it (task-sent and all)."""
    app = make_celery(Settings(broker_url=stack.env["MYCELIAL_BROKER_URL"], home=stack.home))
    guard_of(app).signer = None
    forged = {"v": 1, "run_key": "orders-ok@forged", "daemon": DAEMON, "state": "failed", "attempt": 1}
    app.send_task(CP_RUN_EVENT, args=[forged], queue=CP_QUEUE, task_id=task_id, argsrepr="forged")
    app.close()


@pytest.fixture(scope="module")
def observed(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("flower")
    home = tmp / "home"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env.update(
        MYCELIAL_HOME=str(home),
        MYCELIAL_BROKER_URL=broker.fresh_url(),
        MYCELIAL_DATABASE_URL=f"sqlite:///{home / 'cp.db'}",
        MYCELIAL_HEARTBEAT_INTERVAL="1",
        MYCELIAL_HEALTH_CHECK_INTERVAL="1",
        MYCELIAL_PROBE_INTERVAL="1",
        MYCELIAL_ALLOWED_ROOTS=str(tmp),
        PYTHONUNBUFFERED="1",
    )
    stack = Stack(home=home, env=env)
    try:
        make_shop(tmp / "shop.db")
        port = free_port()
        stack.start("worker", "worker")
        stack.start("beat", "beat")  # health checks and probes every second; queues the retry
        start_flower(stack, port)
        wait_for(lambda: (home / CREDENTIALS_FILE).exists(), timeout=30, what="Flower's credentials")
        user, _, password = (home / CREDENTIALS_FILE).read_text().strip().partition(":")
        seen = Observed(stack=stack, port=port, auth=(user, password), runs={}, tmp=tmp)

        config = CONFIG.format(
            daemon=DAEMON, shop=tmp / "shop.db", wh=tmp / "wh.db", ghost=tmp / "gone.db", closed=free_port()
        )
        stack.cli("apply", "-f", str(stack.write_config(config)), check=True)
        stack.start(
            "daemon",
            "daemon",
            "--name",
            DAEMON,
            env={"WH_PASSWORD": WH_SECRET},
        )
        stack.wait_online(DAEMON, timeout=90)
        # Flower has the daemon's worker heartbeats: it is capturing events
        wait_for(
            lambda: f'flower_worker_online{{worker="daemon@{DAEMON}"}} 1.0' in seen.get("/metrics").text,
            timeout=60,
            what="Flower to hear from the daemon",
            stack=stack,
        )
        listening_since = datetime.now(UTC)

        seen.runs["orders-ok"] = run_to_the_end(stack, "orders-ok", exit_code=0)
        seen.runs["orders-broken"] = run_to_the_end(stack, "orders-broken", exit_code=1)
        seen.runs["orders-retried"] = run_to_the_end(stack, "orders-retried", exit_code=1)
        slow = json.loads(stack.cli("run", "orders-slow", "--json", check=True).stdout)["run_key"]
        wait_for(lambda: the_run(stack, "orders-slow")["state"] == "running", timeout=60, what="slow run")
        stack.cli("cancel", slow, check=True)
        seen.runs["orders-slow"] = wait_for(
            lambda: (r := the_run(stack, "orders-slow"))["state"] == "cancelled" and r,
            timeout=60,
            what="the slow run cancelled",
            stack=stack,
        )
        send_unsigned_run_event(stack, task_id=FORGED_ID)
        # several seconds of health checks and probes, all seen through to the daemon and back
        wait_for(
            lambda: probed_since(stack, listening_since + timedelta(seconds=5)),
            timeout=60,
            what="probes answered",
            stack=stack,
        )
        yield seen
    finally:
        stack.stop_all()


def job_tasks(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {uuid: t for uuid, t in tasks.items() if t["name"] == DAEMON_RUN_JOB}


def settled(seen: Observed) -> dict[str, dict[str, Any]] | None:
    """Flower's tasks once every job shows its final state and no task is still on its way
    (events arrive a moment apart; a message refused unprocessed ends REJECTED, not PENDING)."""
    tasks = seen.tasks()
    jobs = job_tasks(tasks)
    retried = seen.runs["orders-retried"]["run_key"]
    wanted = [r["run_key"] for r in seen.runs.values()] + [f"{retried}#2"]
    final = ("SUCCESS", "FAILURE", "REVOKED")
    pending = [t for t in tasks.values() if t["state"] in ("PENDING", "RECEIVED", "STARTED")]
    if all(key in jobs and jobs[key]["state"] in final for key in wanted) and not pending:
        return tasks
    return None


def test_flowers_api_shows_each_run_as_it_ended_and_no_housekeeping_task(observed: Observed) -> None:
    seen = observed
    runs = seen.runs
    assert [runs[p]["state"] for p in ("orders-ok", "orders-broken", "orders-retried", "orders-slow")] == [
        "succeeded",
        "failed",
        "failed",
        "cancelled",
    ], runs
    tasks = wait_for(lambda: settled(seen), timeout=30, what="each job ended in Flower", stack=seen.stack)
    jobs = job_tasks(tasks)
    ok, broken, retried, slow = (runs[p]["run_key"] for p in runs)

    assert jobs[ok]["state"] == "SUCCESS", jobs[ok]
    assert jobs[ok]["args"] == f"attempt 1/1 pipeline=orders-ok daemon={DAEMON} run={ok}"

    failed = jobs[broken]
    assert failed["state"] == "FAILURE", failed
    assert failed["exception"].startswith("RunFailed: pipeline orders-broken: source ghost: "), failed
    assert "does not exist" in failed["exception"] and "\n" not in failed["exception"]
    assert failed["exception"].removeprefix("RunFailed: ") == runs["orders-broken"]["error"]
    assert failed["args"] == f"attempt 1/3 pipeline=orders-broken daemon={DAEMON} run={broken}"
    assert failed["retries"] == 0  # Celery never retried it: the control plane decides on attempts

    first, second = jobs[retried], jobs[f"{retried}#2"]
    assert (first["state"], second["state"]) == ("FAILURE", "FAILURE"), (first, second)
    assert first["args"] == f"attempt 1/2 pipeline=orders-retried daemon={DAEMON} run={retried}"
    assert second["args"] == f"attempt 2/2 pipeline=orders-retried daemon={DAEMON} run={retried}"
    assert second["exception"].startswith("RunFailed: pipeline orders-retried: destination wh-down: ")
    assert runs["orders-retried"]["attempt"] == 2  # each attempt once: no redelivery, no extra retry
    assert len(jobs) == 5, sorted(jobs)

    # a message the control plane refused unprocessed is not left PENDING for ever
    assert tasks[FORGED_ID]["state"] == "REJECTED", tasks[FORGED_ID]

    cancelled = jobs[slow]
    assert cancelled["state"] == "REVOKED", cancelled
    assert cancelled["exception"].startswith("RunCancelled: pipeline orders-slow: "), cancelled

    text = json.dumps(tasks)
    assert WH_SECRET not in text and "Passw0rd" not in text
    listed = {t["name"] for t in tasks.values()}
    assert listed & UNLISTED_TASKS == set(), listed
    assert "cp.run_event" in listed and "daemon.apply_config" in listed  # the rest of the flow is shown
    # nobody sent Flower a single event about housekeeping: none is even counted in its metrics
    metrics = seen.get("/metrics").text
    counted = {line.split('task="')[1].split('"')[0] for line in metrics.splitlines() if "task=" in line}
    assert counted & UNLISTED_TASKS == set(), counted
    # the failed jobs were acknowledged: no job of the daemon's is held for a redelivery
    client = redis_client(seen.stack.env["MYCELIAL_BROKER_URL"])
    held = client.hvals(unacked_keys(daemon=DAEMON)["unacked_key"])
    client.close()
    assert [m for m in held if DAEMON_RUN_JOB.encode() in m] == []
    assert "duplicate delivery" not in (seen.stack.home / "daemon.log").read_text(errors="replace")


def playwright_or_skip() -> Any:
    """Playwright's sync API to drive the system's Chromium; in CI both must be there."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            from playwright import sync_api
        except ImportError:
            missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing is None:
        return sync_api
    if IN_CI:
        pytest.fail(f"the browser test must run in CI: {missing}")
    pytest.skip(f"no browser here: {missing}")


def test_the_failed_run_is_on_flowers_failed_tab_in_a_real_browser(
    observed: Observed, tmp_path: Path
) -> None:
    sync_api = playwright_or_skip()
    seen = observed
    wait_for(lambda: settled(seen), timeout=30, what="Flower to show every job ended", stack=seen.stack)
    broken, ok = seen.runs["orders-broken"]["run_key"], seen.runs["orders-ok"]["run_key"]
    retried = seen.runs["orders-retried"]["run_key"]
    user, password = seen.auth
    shot = tmp_path / "flower-failed.png"

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            context = browser.new_context(
                http_credentials={"username": user, "password": password},
                viewport={"width": 1920, "height": 900},
            )
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{seen.port}/tasks", wait_until="networkidle")
            failed_tab = page.locator('button.task-state-filter[data-task-state="FAILURE"]')
            failed_tab.click()
            sync_api.expect(failed_tab).to_have_attribute("aria-pressed", "true")
            # the table redraws from Flower's search once the tab is chosen: the three failed jobs
            rows = page.locator("#tasks-table tbody tr")
            sync_api.expect(rows).to_have_count(3, timeout=20_000)
            sync_api.expect(rows.filter(has_text="FAILURE")).to_have_count(3)
            states = page.locator("#tasks-table tbody tr td span.badge").all_inner_texts()
            assert states == ["FAILURE"] * 3, states
            row = rows.filter(has_text=broken)
            sync_api.expect(row).to_have_count(1)
            assert "RunFailed: pipeline orders-broken: source ghost:" in row.inner_text()
            assert rows.filter(has_text=ok).count() == 0
            retry = rows.filter(has_text=f"{retried}#2")
            assert "attempt 2/2 pipeline=orders-retried" in retry.inner_text()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert shot.stat().st_size > 0
    if SCREENSHOT_COPY.parent.is_dir():  # for whoever reviews this on the machine it ran on
        shutil.copyfile(shot, SCREENSHOT_COPY)
