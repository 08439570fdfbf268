"""A password given as a secret reference is resolved on the daemon only: it never shows in a run
error, an event, a log line or Flower's task view."""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid

import pytest
from sqlmodel import Session, select

from cp.db import make_engine
from cp.models import DaemonEvent
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for
from tests.test_up import free_port

pytestmark = pytest.mark.integration

SECRET = f"s3cret-{uuid.uuid4().hex[:10]}"

CONFIG = """
daemons: [{{name: edge-s}}]
connectors:
  - name: pg-ok
    kind: postgres
    dsn: "postgresql://postgres:${{env:PG_SECRET}}@127.0.0.1:5432/test"
    schema: {schema}
  - name: pg-down
    kind: postgres
    dsn: "host=127.0.0.1 port=1 user=postgres password=${{env:PG_SECRET}} dbname=test connect_timeout=2"
  - {{name: local, kind: sqlite, path: out.db}}
pipelines:
  - name: reachable
    source: {{connector: pg-ok, table: items}}
    destination: {{connector: local, table: items}}
    daemon: edge-s
  - name: unreachable
    source: {{connector: pg-down, table: items}}
    destination: {{connector: local, table: items2}}
    daemon: edge-s
    retries: {{max_attempts: 1}}
"""


def flower_tasks(port: int, credentials: str) -> dict[str, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks")
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_a_secret_reference_is_resolved_on_the_daemon_and_shown_nowhere(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
    postgres_server_url: str,
) -> None:
    import psycopg

    schema = f"mycelial_secret_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.items (id BIGINT PRIMARY KEY, name TEXT)")
        conn.execute(f"INSERT INTO {schema}.items VALUES (1, 'a'), (2, 'b')")
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url)
    stack.env["PG_SECRET"] = SECRET
    port = free_port()
    try:
        stack.start("worker", "worker")
        stack.start("daemon", "daemon", "--name", "edge-s")
        stack.start("flower", "flower", "--port", str(port))
        stack.wait_heard_from("edge-s")  # undeclared until the configuration is applied
        applied = stack.cli("apply", "-f", str(stack.write_config(CONFIG.format(schema=schema))), check=True)
        stack.wait_online("edge-s")

        ok = stack.cli("run", "reachable", "--wait", "--timeout", "60")
        assert ok.returncode == 0, ok.stderr + stack.logs()
        failed = stack.cli("run", "unreachable", "--wait", "--timeout", "60")
        assert failed.returncode == 1
        run = next(r for r in stack.json("runs")["runs"] if r["pipeline"] == "unreachable")
        assert run["state"] == "failed" and run["error_retryable"] is True
        assert "cannot connect" in run["error"]

        credentials = (stack.home / "flower-credentials").read_text().strip()
        tasks = wait_for(
            lambda: (
                (t := flower_tasks(port, credentials))
                and sum(1 for v in t.values() if v["name"] == "daemon.run_job") >= 2  # type: ignore[index]
                and t
            ),
            timeout=30,
            what="Flower to show both jobs",
        )
        shown = json.dumps(tasks)
        assert "pipeline=reachable" in shown

        with Session(make_engine(normalize_database_url(database_url))) as session:
            events = " ".join(e.reason for e in session.exec(select(DaemonEvent)))
        everything = "\n".join(
            [
                applied.stdout,
                failed.stdout,
                failed.stderr,
                json.dumps(stack.json("runs")),
                shown,
                events,
                stack.logs(),
            ]
            + [p.read_text(errors="replace") for p in stack.home.glob("*.log")]
        )
        assert SECRET not in everything
    finally:
        stack.stop_all()
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
