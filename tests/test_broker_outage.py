"""A broker outage does not cost a running job: Redis SIGKILLed for 15 s in the middle of a
200,000-row run, then started again empty on the same port. The run ends succeeded in its first
attempt with the destination exact, and every process consumes again afterwards."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import Stack, wait_for
from tests.test_effectively_once import committed_state, digest
from tests.test_effectively_once import make_source as make_events_source
from tests.test_scheduling_faults import PrivateRedis, private_redis, run_by_key  # noqa: F401

pytestmark = pytest.mark.integration

OUTAGE = 15.0

CONFIG = """
daemons: [{{name: edge-o}}]
connectors:
  - {{name: shop, kind: sqlite, path: {home}/shop.db}}
  - {{name: warehouse, kind: sqlite, path: {home}/warehouse.db}}
pipelines:
  - name: events
    source: {{connector: shop, table: events}}
    destination: {{connector: warehouse, table: events}}
    daemon: edge-o
    mode: append
    batch_size: 30
  - name: after
    source: {{connector: shop, table: events}}
    destination: {{connector: warehouse, table: after_outage}}
    daemon: edge-o
    mode: replace
    batch_size: 20000
"""

HEALTH = {
    "heartbeat_interval": "1",
    "offline_after_missed": "5",
    "health_check_interval": "1",
    "probe_interval": "2",
    "probe_timeout": "4",
}


def run_row(stack: Stack, run_key: str) -> dict[str, Any]:
    return next(r for r in stack.json("runs", "--pipeline", "events")["runs"] if r["run_key"] == run_key)


def start_a_long_run(stack: Stack) -> str:
    """Worker, beat and daemon up, and the 200,000-row run partly loaded; returns its run key."""
    make_events_source(stack.home / "shop.db")
    config = stack.write_config(CONFIG.format(home=stack.home))
    stack.start("worker", "worker")
    stack.start("beat", "beat")
    stack.cli("apply", "-f", str(config), check=True)  # declared first: only then online
    stack.start("daemon", "daemon", "--name", "edge-o")
    wait_for(
        lambda: (d := stack.daemon("edge-o")) and d["status"] == "online",
        timeout=60, what="the daemon online", stack=stack,
    )  # fmt: skip
    run_key = json.loads(stack.cli("run", "events", "--json", check=True).stdout)["run_key"]

    def partly_loaded() -> bool:
        state = committed_state(stack.home / "warehouse.db")
        return bool(state and int(state["rows_loaded"]) > 0 and not state["complete"])  # type: ignore[call-overload]

    wait_for(partly_loaded, timeout=60, what="a partly loaded run", stack=stack)
    return str(run_key)


def assert_the_run_succeeds_in_its_first_attempt_with_every_row_once(stack: Stack, run_key: str) -> None:
    done = wait_for(
        lambda: (r := run_row(stack, run_key))
        and (r["state"] in ("succeeded", "failed", "lost", "timed_out", "cancelled") or r["attempt"] > 1)
        and r,
        timeout=120, what="the run to end", stack=stack,
    )  # fmt: skip
    assert (done["state"], done["attempt"]) == ("succeeded", 1), done
    assert digest(stack.home / "warehouse.db") == digest(stack.home / "shop.db")  # count and checksum


def assert_every_process_consumes_again(stack: Stack) -> None:
    # the daemon runs a new job and reports it through the cp worker; beat has the cp worker send
    # probes, which the daemon answers through its own queue
    after = stack.cli("run", "after", "--wait", "--timeout", "90")
    assert after.returncode == 0, after.stderr + stack.logs()
    probed = stack.daemon("edge-o")
    wait_for(
        lambda: (d := stack.daemon("edge-o"))
        and d["status"] == "online"
        and d["last_probe_reply_at"] != probed["last_probe_reply_at"],  # type: ignore[index]
        timeout=30, what="a probe answered after the outage", stack=stack,
    )  # fmt: skip
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}\n{stack.logs()}"
    logs = "".join(p.read_text(errors="replace") for p in stack.home.glob("*.log"))
    assert "Unrecoverable error" not in logs, stack.logs()  # no process restarted itself


def test_a_redis_outage_in_the_middle_of_a_run_costs_no_attempt_and_every_process_consumes_again(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    stack: Stack = make_stack(make_database_url("sqlite"), **HEALTH)
    stack.env["MYCELIAL_BROKER_URL"] = private_redis.url
    run_key = start_a_long_run(stack)
    private_redis.stop()  # SIGKILL, while the run is in the middle of its 6,667 batches
    time.sleep(OUTAGE)
    private_redis.start()  # empty: a restart without persistence
    assert_the_run_succeeds_in_its_first_attempt_with_every_row_once(stack, run_key)
    assert_every_process_consumes_again(stack)


def test_connections_dropped_while_redis_keeps_its_data_neither_run_a_job_twice_nor_stop_a_worker(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    # the running job's message goes back to its queue when the daemon's connection breaks, comes
    # back to the daemon that still runs it, and is acknowledged on the old connection at the end
    stack: Stack = make_stack(make_database_url("sqlite"), **HEALTH)
    stack.env["MYCELIAL_BROKER_URL"] = private_redis.url
    run_key = start_a_long_run(stack)
    for _ in range(3):
        kill = ["redis-cli", "-p", str(private_redis.port), "client", "kill", "type", "normal"]
        subprocess.run(kill, check=True, capture_output=True)
        time.sleep(2)
    assert_the_run_succeeds_in_its_first_attempt_with_every_row_once(stack, run_key)
    assert_every_process_consumes_again(stack)
