"""Log aggregation end to end: real daemons ship their records through Redis to a real
control-plane worker; a broker outage loses none, attackers can neither forge, flood nor
duplicate records; ``mycelial logs`` filters, follows and groups them."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import Session, col
from sqlmodel import select as sql_select

from cp.db import make_engine
from cp.embedded_redis import redis_client
from cp.models import DaemonEvent, LogRecord
from cp.protocol import CP_LOGS, CP_QUEUE, LOG_ROW_FIELDS, log_ack_key, log_row
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for
from tests.forgery import as_daemon, unsigned_messages
from tests.poison import push
from tests.test_broker_outage import (
    HEALTH,
    assert_the_run_succeeds_in_its_first_attempt_with_every_row_once,
    start_a_long_run,
)
from tests.test_scheduling_faults import PrivateRedis, private_redis  # noqa: F401

pytestmark = pytest.mark.integration

OUTAGE = 20.0


def records(database_url: str, daemon: str) -> list[LogRecord]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            query = sql_select(LogRecord).where(LogRecord.daemon == daemon).order_by(col(LogRecord.id))
            return list(session.exec(query))
    finally:
        engine.dispose()


def events(database_url: str, kind: str) -> list[DaemonEvent]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            return list(session.exec(sql_select(DaemonEvent).where(DaemonEvent.kind == kind)))
    finally:
        engine.dispose()


def test_records_logged_while_redis_is_down_arrive_once_each_in_order(
    make_stack: Callable[..., Stack],
    make_database_url: Callable[[str], str],
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    database_url = make_database_url("sqlite")
    stack = make_stack(database_url, **HEALTH)
    stack.env["MYCELIAL_BROKER_URL"] = private_redis.url
    run_key = start_a_long_run(stack)

    def progress_of_the_run() -> list[LogRecord]:
        return [
            r for r in records(database_url, "edge-o") if r.run_key == run_key and "progress" in r.message
        ]

    wait_for(progress_of_the_run, timeout=60, what="the run's progress shipped", stack=stack)
    private_redis.stop()
    down_from = datetime.now(UTC)
    time.sleep(OUTAGE)
    down_until = datetime.now(UTC)
    private_redis.start()  # empty: whatever it held is gone
    assert_the_run_succeeds_in_its_first_attempt_with_every_row_once(stack, run_key)
    wait_for(
        lambda: any(
            r.message.startswith(f"run {run_key} succeeded") for r in records(database_url, "edge-o")
        ),
        timeout=60,
        what="the run's last record shipped",
        stack=stack,
    )
    shipped = records(database_url, "edge-o")
    seqs = [r.seq for r in shipped]
    # one daemon process numbers its records one by one: no gap means none lost, and the
    # unique (daemon, seq) means none twice; stored in the order they were logged
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    during = [r for r in shipped if down_from <= r.ts <= down_until]
    assert len(during) >= 5, [r.message for r in shipped][-40:]
    # every progress line the daemon wrote to its own log is there once, with the run's labels
    logged = [
        line.split("] ", 1)[1]
        for line in (stack.home / "daemon.log").read_text(errors="replace").splitlines()
        if "] progress: " in line
    ]
    progress = progress_of_the_run()
    assert [r.message for r in progress] == logged
    assert {(r.pipeline, r.attempt) for r in progress} == {("events", 1)}


# --- attackers and the CLI, against one real daemon ----------------------------------------

CONFIG = """
daemons: [{{name: d1}}, {{name: d2}}]
connectors:
  - {{name: shop, kind: sqlite, path: {home}/shop.db}}
  - {{name: warehouse, kind: sqlite, path: {home}/warehouse.db}}
pipelines:
  - name: orders
    source: {{connector: shop, table: orders}}
    destination: {{connector: warehouse, table: orders}}
    daemon: d1
"""


class Edge:
    def __init__(self, stack: Stack, database_url: str) -> None:
        self.stack, self.database_url = stack, database_url
        self.client = redis_client(stack.env["MYCELIAL_BROKER_URL"])

    def batch(self, seqs: range, **fields: Any) -> dict[str, Any]:
        record = {"ts": datetime.now(UTC).isoformat(), "level": "INFO", "logger": "attacker", "message": "x"}
        record.update(fields)
        rows = [log_row({**record, "seq": s, "message": str(record["message"]).format(s=s)}) for s in seqs]
        return {"v": 1, "name": "d1", "rows": rows}

    def batch_with(self, seqs: range, change: Callable[[list[list[Any]]], None]) -> dict[str, Any]:
        """A batch whose rows ``change`` altered in place."""
        payload = self.batch(seqs)
        change(payload["rows"])
        return payload

    def send(self, payload: dict[str, Any], *, signer: str = "d1") -> None:
        push(self.client, CP_QUEUE, as_daemon(self.stack.home, signer, CP_QUEUE, CP_LOGS, payload))

    def reasons(self, kind: str) -> str:
        return " | ".join(e.reason for e in events(self.database_url, kind))

    def logs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.stack.cli("logs", *args)


@pytest.fixture
def edge(make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]) -> Iterator[Edge]:
    import sqlite3

    unsigned_messages()
    database_url = make_database_url("sqlite")
    stack = make_stack(database_url)
    with sqlite3.connect(stack.home / "shop.db") as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 0.5) for i in range(1, 101)])
    stack.cli("apply", "-f", str(stack.write_config(CONFIG.format(home=stack.home))), check=True)
    stack.start("worker", "worker")
    stack.start("d1", "daemon", "--name", "d1")
    stack.wait_online("d1")
    yield Edge(stack, database_url)


def test_forged_oversized_and_redelivered_batches_store_nothing_extra(edge: Edge) -> None:
    own = wait_for(
        lambda: records(edge.database_url, "d1"), timeout=60, what="d1's own records", stack=edge.stack
    )
    assert all(r.seq > 10**12 for r in own)  # a fresh spool numbers past any earlier life
    # d1's key, speaking for d2; a row naming a daemon (one field too many), a row short of one, a
    # seq that is no number; records as objects (not rows); too many; too long; too much in all
    edge.send({**edge.batch(range(1, 4)), "name": "d2"})
    edge.send(edge.batch_with(range(1, 4), lambda rows: rows[1].append("d2")))
    edge.send(edge.batch_with(range(1, 4), lambda rows: rows[2].pop()))
    edge.send(edge.batch_with(range(1, 4), lambda rows: rows[0].__setitem__(0, "one")))
    objects = edge.batch(range(1, 4))
    edge.send(
        {
            "v": 1,
            "name": "d1",
            "records": [dict(zip(LOG_ROW_FIELDS, r, strict=True)) for r in objects.pop("rows")],
        }
    )
    edge.send(edge.batch(range(1, 1_002)))
    edge.send(edge.batch(range(1, 2), message="x" * 8_001))
    edge.send(edge.batch(range(1, 300), message="x" * 7_999))
    # a valid batch delivered twice, as a broker redelivery or a resend would
    twice = edge.batch(range(5, 8), level="WARNING", message="retry {s} of host db.example.com")
    edge.send(twice)
    edge.send(twice)
    wait_for(
        lambda: "in the name of 'd2'" in edge.reasons("security"), timeout=30, what="the forgery refused"
    )
    wait_for(
        lambda: (
            edge.reasons("message_rejected").count("rejected cp.logs") >= 0
            and len(events(edge.database_url, "message_rejected")) >= 7
        ),
        timeout=30,
        what="the bad batches refused",
        stack=edge.stack,
    )
    rejected = edge.reasons("message_rejected")
    for problem in (
        "at most 1000",
        "at most 8000",
        "at most 2000000",
        "at most 8 items",
        "rows.2.7: Field required",
        "rows.0.0: Input should be a valid integer",
        "records: Extra inputs",
    ):
        assert problem in rejected, rejected
    wait_for(lambda: edge.client.llen(CP_QUEUE) == 0, timeout=30, what="the queue drained")
    mine = [r for r in records(edge.database_url, "d1") if r.logger == "attacker"]
    assert [r.seq for r in mine] == [5, 6, 7]
    assert records(edge.database_url, "d2") == []
    # the acknowledgement only rises: the old seqs did not lower the real daemon's
    assert int(edge.client.get(log_ack_key("d1")) or 0) >= own[-1].seq

    grouped = json.loads(edge.logs("--errors", "--json").stdout)["groups"]
    retry = next(g for g in grouped if g["shape"] == "retry <n> of host <host>")
    assert (retry["count"], retry["daemons"], retry["level"]) == (3, ["d1"], "WARNING")


def test_logs_filters_prints_json_lines_and_follows_a_run_live(edge: Edge) -> None:
    wait_for(lambda: records(edge.database_url, "d1"), timeout=60, what="d1's own records", stack=edge.stack)
    lines = edge.logs("--daemon", "d1", "--json", "--limit", "5").stdout.splitlines()
    assert 1 <= len(lines) <= 5
    first = json.loads(lines[0])
    assert {"daemon", "seq", "ts", "level", "logger", "pipeline", "run_key", "attempt", "message"} <= set(
        first
    )

    for bad in (("--since", "yesterday"), ("--until", "10x"), ("--level", "loud")):
        result = edge.logs(*bad)
        assert result.returncode == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and bad[0] in result.stderr

    follow = subprocess.Popen(
        edge.stack.cli_argv("logs", "--follow", "--json", "--pipeline", "orders", "--grep", "rows"),
        env=edge.stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)  # it has read what is there, and now waits for new records
        ran = edge.stack.cli("run", "orders", "--wait", "--json", "--timeout", "60")
        assert ran.returncode == 0, ran.stderr
        run_key = json.loads(ran.stdout)["run_key"]
        followed = _read_json_line(follow, timeout=30)
        assert (followed["run_key"], followed["pipeline"], followed["attempt"]) == (run_key, "orders", 1)
        assert "rows" in followed["message"]
    finally:
        follow.terminate()
        follow.wait(timeout=10)
    by_run = edge.logs("--run", run_key, "--json").stdout.splitlines()
    assert by_run and all(json.loads(line)["run_key"] == run_key for line in by_run)
    assert edge.logs("--run", run_key, "--level", "error").stdout == ""


def _read_json_line(proc: subprocess.Popen[str], *, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), True)
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"nothing followed within {timeout}s; stderr: {proc.stderr.read() if proc.stderr else ''}"
    return dict(json.loads(proc.stdout.readline()))
