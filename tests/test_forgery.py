"""Issue 10's forgeries against real workers and a real Redis: each is refused and changes nothing
(destinations, run rows and daemon rows compared before and after), and every process still works.

The attacker has broker access only (no key), or is a compromised edge machine holding one
daemon's real key and speaking for another.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from cp.db import make_engine
from cp.embedded_redis import redis_client
from cp.models import Daemon, DaemonEvent, Run, RunState, RunTrigger, utcnow
from cp.protocol import (
    CP_CONFIG_APPLIED,
    CP_DAEMON_HELLO,
    CP_PROBE_REPLY,
    CP_QUEUE,
    CP_RUN_EVENT,
    DAEMON_PROBE,
    DAEMON_RUN_JOB,
    HEARTBEAT_KEY_TTL_SECONDS,
    ConnectorSpec,
    PipelineSpec,
    RunJob,
    daemon_queue,
    dump,
    heartbeat_key,
)
from cp.runs import create_run, get_pipeline
from cp.security.keys import Identity
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for
from tests.forgery import as_daemon, cp_identity, message, unsigned_messages
from tests.poison import push

pytestmark = pytest.mark.integration

ROWS = 500
CONFIG = """
daemons:
  - name: d1
  - name: d2
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
    daemon: d1
  - name: orders_d2
    source: {{connector: shop, table: orders}}
    destination: {{connector: warehouse, table: orders_d2}}
    daemon: d2
"""


class Edge:
    def __init__(self, stack: Stack, database_url: str) -> None:
        self.stack = stack
        self.home = stack.home
        self.source = stack.home / "shop.db"
        self.destination = stack.home / "warehouse.db"
        self.client = redis_client(stack.env["MYCELIAL_BROKER_URL"])
        self.engine = make_engine(normalize_database_url(database_url))

    def daemon_row(self, name: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            row = session.exec(select(Daemon).where(Daemon.name == name)).one()
            return row.model_dump(
                exclude={
                    "last_heartbeat_at",
                    "cpu_percent",
                    "memory_mb",
                    "queue_depth",
                    "last_probe_id",
                    "last_probe_sent_at",
                    "last_probe_reply_at",
                    "last_probe_rtt_ms",
                    "status_since",
                    "status_reason",
                    "running_runs",
                }
            )

    def runs(self) -> list[dict[str, Any]]:
        """What a forged event would change in the runs."""
        fields = {
            "run_key",
            "state",
            "daemon",
            "attempt",
            "rows_read",
            "rows_written",
            "finished_at",
            "error",
        }
        with Session(self.engine) as session:
            return [r.model_dump(include=fields) for r in session.exec(select(Run).order_by(col(Run.id)))]

    def security_events(self, daemon: str | None = None) -> list[DaemonEvent]:
        with Session(self.engine) as session:
            query = select(DaemonEvent).where(DaemonEvent.kind == "security")
            if daemon is not None:
                query = query.where(DaemonEvent.daemon == daemon)
            return list(session.exec(query.order_by(col(DaemonEvent.id))))

    def dead_letters(self, queue: str) -> list[str]:
        return [json.loads(raw)["reason"] for raw in self.client.lrange(f"mycelial.dead.{queue}", 0, -1)]

    def table(self, path: Path, table: str) -> list[tuple[Any, ...]]:
        if not path.exists():
            return []
        with sqlite3.connect(path) as conn:
            try:
                return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            except sqlite3.OperationalError:
                return []

    def run(self, pipeline: str) -> subprocess.CompletedProcess[str]:
        return self.stack.cli("run", pipeline, "--wait", "--timeout", "120")


@pytest.fixture
def edge(make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]) -> Iterator[Edge]:
    unsigned_messages()
    database_url = make_database_url("sqlite")
    stack = make_stack(database_url)
    pair = Edge(stack, database_url)
    with sqlite3.connect(pair.source) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 0.5) for i in range(1, ROWS + 1)])
    config = stack.write_config(CONFIG.format(source=pair.source, destination=pair.destination))
    stack.cli("apply", "-f", str(config), check=True)
    stack.start("worker", "worker")
    stack.start("beat", "beat")  # health checks: a daemon whose heartbeats are refused goes offline
    stack.start("d1", "daemon", "--name", "d1")
    stack.start("d2", "daemon", "--name", "d2")
    for name in ("d1", "d2"):
        wait_for(
            lambda n=name: (
                (d := stack.daemon(n)) and d["status"] == "online" and d["applied_config_version"] == 1
            ),
            timeout=90,
            what=f"{name} online with config 1",
            stack=stack,
        )  # type: ignore[misc]
    yield pair
    pair.engine.dispose()


def job(edge: Edge, *, run_key: str, destination: Path, table: str, mode: str = "replace") -> dict[str, Any]:
    spec = PipelineSpec(
        name="orders",
        source=ConnectorSpec(name="shop", kind="sqlite", options={"path": str(edge.source)}),
        source_table="orders",
        destination=ConnectorSpec(name="loot", kind="sqlite", options={"path": str(destination)}),
        destination_table=table,
        mode=mode,  # type: ignore[arg-type]
    )
    return dump(RunJob(run_key=run_key, attempt=1, pipeline=spec))


def test_forged_jobs_are_refused_by_the_daemon_and_write_nothing(edge: Edge) -> None:
    q1, q2 = daemon_queue("d1"), daemon_queue("d2")
    loot = edge.home / "loot.db"
    stolen = job(edge, run_key="evil@1", destination=loot, table="stolen")
    harmless = {"v": 1, "probe_id": "p1", "sent_at": datetime.now(UTC).isoformat()}
    cp = cp_identity(edge.home)
    forgeries = {
        "unsigned": (message(q1, DAEMON_RUN_JOB, stolen, identity=None), "unsigned message"),
        "another key": (
            message(q1, DAEMON_RUN_JOB, stolen, identity=Identity.generate()),
            "which this daemon does not trust",
        ),
        "task swapped": (
            message(
                q1, DAEMON_RUN_JOB, stolen, identity=cp, signed_task=DAEMON_PROBE, signed_payload=harmless
            ),
            "bad signature",
        ),
        "queue swapped": (message(q1, DAEMON_RUN_JOB, stolen, identity=cp, signed_queue=q2), "bad signature"),
        "tampered payload": (
            message(q1, DAEMON_RUN_JOB, stolen, identity=cp, signed_payload={**stolen, "run_key": "ok@1"}),
            "bad signature",
        ),
        "from a daemon": (as_daemon(edge.home, "d2", q1, DAEMON_RUN_JOB, stolen), "only the control plane"),
        "expired": (message(q1, DAEMON_RUN_JOB, stolen, identity=cp, issued_ago=900), "expired"),
    }
    for forged, _ in forgeries.values():
        push(edge.client, q1, forged)
    # a valid job, and the same message again: it runs once
    replayed = message(
        q1,
        DAEMON_RUN_JOB,
        job(edge, run_key="cp@1", destination=edge.home / "copy.db", table="t", mode="append"),
        identity=cp,
    )
    push(edge.client, q1, replayed)
    wait_for(lambda: len(edge.table(edge.home / "copy.db", "t")) == ROWS, timeout=60, what="the valid job")
    push(edge.client, q1, replayed)

    expected = [reason for _, reason in forgeries.values()] + ["replayed"]
    letters = wait_for(
        lambda: len(edge.dead_letters(q1)) >= len(expected) and edge.dead_letters(q1),
        timeout=60,
        what="every forgery refused",
        stack=edge.stack,
    )
    for reason, letter in zip(expected, reversed(letters), strict=True):
        assert reason in letter, (reason, letter)
    assert not loot.exists()
    assert len(edge.table(edge.home / "copy.db", "t")) == ROWS  # not twice
    # each refusal recorded as a security event of d1 (reported by the daemon, rate-limited)
    wait_for(
        lambda: len(edge.security_events("d1")) >= len(expected),
        timeout=30,
        what="security events",
        stack=edge.stack,
    )
    # and the daemon still does its real work
    done = edge.run("orders")
    assert done.returncode == 0, done.stdout + done.stderr + edge.stack.logs()
    assert edge.table(edge.destination, "orders_copy") == edge.table(edge.source, "orders")


def test_one_daemon_cannot_speak_for_another_nor_for_a_run_placed_elsewhere(edge: Edge) -> None:
    # a run placed on d2 and running there, as the control plane records it
    with Session(edge.engine) as session:
        run = create_run(session, get_pipeline(session, "orders_d2"), trigger=RunTrigger.MANUAL, now=utcnow())
        assert run is not None
        # published: nothing publishes it again (d2 is not really running it: no job exists)
        run.daemon, run.state, run.attempt, run.published_at = "d2", RunState.RUNNING, 1, utcnow()
        session.add(run)
        session.commit()
        run_key = run.run_key
    before = (edge.daemon_row("d2"), edge.runs(), edge.table(edge.destination, "orders_d2"))
    now = datetime.now(UTC).isoformat()
    event = {
        "v": 1,
        "run_key": run_key,
        "state": "succeeded",
        "at": now,
        "rows_read": 123_456,
        "rows_written": 123_456,
        "attempt": 1,
        "seq": 10**9,
    }
    forgeries = {
        "hello": (CP_DAEMON_HELLO, {"v": 1, "name": "d2", "software_version": "evil"}),
        "run event": (CP_RUN_EVENT, {**event, "daemon": "d2"}),
        "config applied": (CP_CONFIG_APPLIED, {"v": 1, "name": "d2", "version": 999, "ok": True}),
        "probe reply": (CP_PROBE_REPLY, {"v": 1, "name": "d2", "probe_id": "x", "sent_at": now}),
    }
    for task, payload in forgeries.values():
        push(edge.client, CP_QUEUE, as_daemon(edge.home, "d1", CP_QUEUE, task, payload))
    # d1 speaking for itself, about a run placed on d2
    push(edge.client, CP_QUEUE, as_daemon(edge.home, "d1", CP_QUEUE, CP_RUN_EVENT, {**event, "daemon": "d1"}))
    # d1's envelope on a heartbeat written into d2's key (without ACLs anyone can write there)
    beat = {"v": 1, "name": "d2", "sent_at": now, "running_runs": [run_key]}
    signed_beat = as_daemon(edge.home, "d1", heartbeat_key("d2"), "cp.heartbeat", beat)

    def refused() -> str:
        return " | ".join(e.reason for e in edge.security_events())

    # d2 overwrites its key every second and the control plane reads it twice a second: write it in
    # between until it was read, with gaps that let d2's own heartbeats through (a key held by the
    # forger for seconds on end would silence d2 — the broker ACLs are what stop that, see
    # test_broker_acl.py — and make its status change for a reason this test is not about)
    for _ in range(20):
        value = json.dumps({"auth": signed_beat["headers"]["mycelial_auth"], "beat": beat})
        edge.client.set(heartbeat_key("d2"), value, ex=HEARTBEAT_KEY_TTL_SECONDS)
        time.sleep(0.6)
        if "heartbeat of d2 signed by daemon:d1" in refused():
            break
        time.sleep(1.0)
        signed_beat = as_daemon(edge.home, "d1", heartbeat_key("d2"), "cp.heartbeat", beat)

    expected = [
        f"daemon d1 sent {task} in the name of 'd2' (claims to be daemon:d1)"
        for task, _ in forgeries.values()
    ]
    expected += [
        f"d1 sent succeeded for run {run_key}, which is placed on d2",
        "heartbeat of d2 signed by daemon:d1",
    ]
    wait_for(
        lambda: all(e in refused() for e in expected), timeout=60, what="every refusal", stack=edge.stack
    )
    after = (edge.daemon_row("d2"), edge.runs(), edge.table(edge.destination, "orders_d2"))
    assert after == before


def test_a_replayed_daemon_message_is_refused(edge: Edge) -> None:
    reply = as_daemon(
        edge.home, "d1", CP_QUEUE, CP_CONFIG_APPLIED, {"v": 1, "name": "d1", "version": 1, "ok": True}
    )
    push(edge.client, CP_QUEUE, reply)
    # once the control plane has processed it (acknowledged), a copy is a replay
    wait_for(lambda: edge.client.llen(CP_QUEUE) == 0, timeout=30, what="the message taken", stack=edge.stack)
    time.sleep(2)
    push(edge.client, CP_QUEUE, reply)
    # refused by the control plane, which records who the message claims to be, blaming no daemon
    expected = "replayed message (nonce of daemon:d1 already seen) (claims to be daemon:d1)"
    wait_for(
        lambda: [e for e in edge.security_events() if expected in e.reason],
        timeout=30,
        what="the replay refused",
        stack=edge.stack,
    )


def test_revoked_daemon_is_refused_at_once_and_a_new_enrolment_gives_it_a_new_key(edge: Edge) -> None:
    stack = edge.stack
    old_key = stack.daemon("d1")["key_id"]  # type: ignore[index]
    revoked = stack.cli("daemons", "revoke", "d1")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout + revoked.stderr
    # its heartbeats are refused: it goes offline, and its pipeline cannot run on it
    wait_for(lambda: stack.daemon("d1")["status"] == "offline", timeout=60, what="d1 offline", stack=stack)  # type: ignore[index]
    assert any("the key of daemon d1 is revoked" in e.reason for e in edge.security_events("d1"))
    assert stack.daemon("d1")["key"] == "revoked"  # type: ignore[index]

    # re-enrolled: a new key, online again, runs again
    stack.stop("d1")
    token = stack.cli("daemons", "enroll", "d1", check=True).stdout.strip()
    env_token = {**stack.env, "MYCELIAL_ENROLL_TOKEN": token}
    log = open(stack.home / "d1-again.log", "wb")
    stack.procs["d1"] = subprocess.Popen(
        stack.cli_argv("daemon", "--name", "d1"), env=env_token, stdout=log, stderr=subprocess.STDOUT
    )
    wait_for(
        lambda: stack.daemon("d1")["status"] == "online", timeout=60, what="d1 online again", stack=stack
    )  # type: ignore[index]
    row = stack.daemon("d1")
    assert row["key"] == "enrolled" and row["key_id"] != old_key  # type: ignore[index]
    done = edge.run("orders")
    assert done.returncode == 0, done.stdout + done.stderr + stack.logs()

    # the same token a second time (a copy of the daemon elsewhere) is refused; the key stays
    other_home = stack.home / "elsewhere"
    other_home.mkdir()
    second = subprocess.Popen(
        stack.cli_argv("daemon", "--name", "d1"),
        env={**env_token, "MYCELIAL_HOME": str(other_home)},
        stdout=open(stack.home / "d1-copy.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    stack.procs["d1-copy"] = second
    wait_for(
        lambda: any("was already used" in e.reason for e in edge.security_events()),
        timeout=60,
        what="the second use refused",
        stack=stack,
    )
    assert stack.daemon("d1")["key_id"] == row["key_id"]  # type: ignore[index]


def test_an_expired_token_is_refused(edge: Edge) -> None:
    stack = edge.stack
    token = stack.cli("daemons", "enroll", "d3", "--expires", "1", check=True).stdout.strip()
    time.sleep(1.5)
    late = subprocess.Popen(
        stack.cli_argv("daemon", "--name", "d3"),
        env={**stack.env, "MYCELIAL_ENROLL_TOKEN": token},
        stdout=open(stack.home / "d3.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    stack.procs["d3"] = late
    wait_for(
        lambda: any("expired at" in e.reason for e in edge.security_events()),
        timeout=60,
        what="the expired token refused",
        stack=stack,
    )


def test_the_control_plane_key_rotates_without_stopping_anything(edge: Edge) -> None:
    stack = edge.stack
    old = cp_identity(edge.home)
    rotated = stack.cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "2 daemon(s) told" in rotated.stdout + rotated.stderr
    new = cp_identity(edge.home)
    assert new.key_id != old.key_id
    done = edge.run("orders")  # a job signed with the new key
    assert done.returncode == 0, done.stdout + done.stderr + stack.logs()

    retired = stack.cli("keys", "retire-previous")
    assert retired.returncode == 0, retired.stderr
    done = edge.run("orders")
    assert done.returncode == 0, done.stdout + done.stderr + stack.logs()
    # the retired key no longer commands anyone
    q1 = daemon_queue("d1")
    probe = {"v": 1, "probe_id": "old-key", "sent_at": datetime.now(UTC).isoformat()}
    push(edge.client, q1, message(q1, DAEMON_PROBE, probe, identity=old))
    wait_for(
        lambda: any("does not trust" in r for r in edge.dead_letters(q1)),
        timeout=60,
        what="the retired key refused",
        stack=stack,
    )


def test_forged_heartbeats_and_probe_replies_cannot_keep_a_killed_daemon_online(edge: Edge) -> None:
    stack = edge.stack
    stack.stop("d2", kill=True)
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(0.5):
            now = datetime.now(UTC).isoformat()
            beat = {"v": 1, "name": "d2", "sent_at": now}
            push(edge.client, CP_QUEUE, message(CP_QUEUE, "cp.heartbeat", beat, identity=None))
            unsigned = json.dumps({"auth": None, "beat": beat})
            edge.client.set(heartbeat_key("d2"), unsigned, ex=HEARTBEAT_KEY_TTL_SECONDS)
            reply = {"v": 1, "name": "d2", "probe_id": "x", "sent_at": now}
            push(
                edge.client,
                CP_QUEUE,
                message(CP_QUEUE, CP_PROBE_REPLY, reply, identity=Identity.generate(), by="daemon:d2"),
            )

    thread = threading.Thread(target=keep_alive, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: stack.daemon("d2")["status"] == "offline", timeout=60, what="d2 offline", stack=stack
        )  # type: ignore[index]
    finally:
        stop.set()
        thread.join()


def test_a_forged_job_never_sends_a_secret_to_the_attackers_server(edge: Edge) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    spec = PipelineSpec(
        name="orders",
        source=ConnectorSpec(name="shop", kind="sqlite", options={"path": str(edge.source)}),
        source_table="orders",
        destination=ConnectorSpec(
            name="pg", kind="postgres", options={"dsn": f"postgresql://u:${{env:PG_PW}}@127.0.0.1:{port}/x"}
        ),
        destination_table="stolen",
    )
    payload = dump(RunJob(run_key="evil@2", attempt=1, pipeline=spec))
    q1 = daemon_queue("d1")
    for forged in (
        message(q1, DAEMON_RUN_JOB, payload, identity=None),
        message(q1, DAEMON_RUN_JOB, payload, identity=Identity.generate()),
    ):
        push(edge.client, q1, forged)
    wait_for(lambda: len(edge.dead_letters(q1)) >= 2, timeout=60, what="both refused", stack=edge.stack)
    connected = False
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    while datetime.now(UTC) < deadline:
        try:
            listener.accept()[0].close()
            connected = True
        except TimeoutError:
            continue
    listener.close()
    assert not connected, "the daemon connected to the attacker's server"
