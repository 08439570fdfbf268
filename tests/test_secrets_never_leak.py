"""A password given as a secret reference is resolved on the daemon only: it never shows in a run
error, an event, a log line or Flower's task view, in any form, whatever a driver does with it; a
literal one is refused at apply; and config pushes are applied in version order."""

from __future__ import annotations

import base64
import json
import re
import socket
import sqlite3
import stat
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from sqlmodel import Session, select

from cp.celery_app import make_celery
from cp.config_store import ConfigPush
from cp.db import make_engine
from cp.dispatch import CeleryDispatcher, apply_config_message
from cp.models import DaemonEvent
from cp.protocol import DesiredState
from cp.settings import Settings, normalize_database_url
from tests.conftest import IN_CI, Stack, wait_for
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
  - {{name: local, kind: sqlite, path: {home}/out.db}}
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
        applied = stack.cli(
            "apply", "-f", str(stack.write_config(CONFIG.format(schema=schema, home=stack.home))), check=True
        )
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


# --- every form of a secret, through real drivers -------------------------------------------

TAG = uuid.uuid4().hex[:6]
# spaces, "@", "/", "#", "%", quotes and unicode; every piece is long and tagged, so that finding
# one anywhere can only mean it leaked
PASSWORDS = {
    "PW_SPLIT": f"alpha{TAG} bravo{TAG}@charlie{TAG}/delta{TAG}#echo{TAG}",
    "PW_QUOTED": f"foxtrot{TAG}%41golf{TAG} 'hotel{TAG}' \"india{TAG}\"",
    "PW_UNICODE": f"jülïet{TAG} пароль{TAG}@密码密码{TAG}",
}
FAILURES = ("wrong-host", "wrong-port", "wrong-password", "closed")
# the two leaks first seen: an unquoted value with a space, an unencoded "@" in a URL
RAW = {"PW_SPACE": f"mike{TAG} november{TAG}", "PW_AT": f"oscar{TAG}@papa{TAG}"}
# what a user who percent-encodes the password for a URL puts in the variable
ENCODED = {f"{env}_URL": quote(password, safe="") for env, password in PASSWORDS.items()}


def forms_of(password: str) -> set[str]:
    """The password, its encodings, and each of its pieces."""
    pieces = {p for p in re.findall(r"[^\W_]+", password) if len(p) >= 4}
    return {password, quote(password, safe=""), quote_plus(password), *pieces}


@pytest.fixture
def closing_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts each connection and closes it at once."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(timeout=5)
    server.close()


def mysql_server() -> dict[str, object]:
    from tests.movement.harness_mysql import connect, server_options

    options = server_options()
    try:
        connect(options).close()
    except Exception as exc:  # any failure means "not available here"
        if IN_CI:
            pytest.fail(f"MySQL/MariaDB is required in CI: {exc}")
        pytest.skip(f"MySQL/MariaDB is not available: {exc}")
    return options


def postgres_connector(name: str, env: str, failure: str, *, closed_port: int, form: str) -> str:
    host, port, user = {
        "wrong-host": (f"nowhere-{TAG}.invalid", 5432, "postgres"),
        "wrong-port": ("127.0.0.1", 1, "postgres"),
        # the test server trusts local connections: an unknown role is how it refuses credentials
        "wrong-password": ("127.0.0.1", 5432, f"nobody_{TAG}"),
        "closed": ("127.0.0.1", closed_port, "postgres"),
    }[failure]
    reference = f"${{env:{env}}}"
    if form == "url":
        dsn = f"postgresql://{user}:{reference}@{host}:{port}/test?connect_timeout=3"
    else:
        value = f"'{reference}'" if form == "quoted" else reference
        dsn = f"host={host} port={port} user={user} password={value} dbname=test connect_timeout=3"
    return f"  - {{name: {name}, kind: postgres, dsn: {json.dumps(dsn)}}}\n"


def mysql_connector(name: str, env: str, failure: str, *, closed_port: int, server: dict[str, object]) -> str:
    host, port = {
        "wrong-host": (f"nowhere-{TAG}.invalid", 3306),
        "wrong-port": ("127.0.0.1", 1),
        "wrong-password": (server["host"], server["port"]),
        "closed": ("127.0.0.1", closed_port),
    }[failure]
    return (
        f"  - {{name: {name}, kind: mysql, host: '{host}', port: {port}, user: '{server['user']}',"
        f" password: '${{env:{env}}}', database: '{server['database']}'}}\n"
    )


def leak_config(connectors: list[tuple[str, str]], *, home: Path) -> str:
    text = "daemons: [{name: edge-s}]\nconnectors:\n"
    text += "".join(declaration for _, declaration in connectors)
    text += f"  - {{name: local, kind: sqlite, path: {home}/out.db}}\npipelines:\n"
    for name, _ in connectors:
        text += (
            f"  - {{name: {name}, source: {{connector: {name}, table: items}},"
            f" destination: {{connector: local, table: {name.replace('-', '_')}}},"
            " daemon: edge-s, retries: {max_attempts: 1}}\n"
        )
    return text


def cp_tables_text(database_url: str) -> str:
    """Every row of every control-plane table, as text."""
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(repr(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))


def everything_written(stack: Stack, database_url: str) -> str:
    """The cp tables, the CLI's view of runs, every process log and the daemon's local files."""
    runs = stack.cli("runs", "--json", "--limit", "1000", check=True).stdout
    local = [p.read_text(errors="replace") for p in (stack.home / "daemons").rglob("*") if p.is_file()]
    logs = [p.read_text(errors="replace") for p in stack.home.glob("*.log")]
    return "\n".join([cp_tables_text(database_url), runs, *logs, *local])


def assert_no_form_of_any_password(text: str) -> None:
    for env, password in {**PASSWORDS, **RAW}.items():
        leaked = sorted(form for form in forms_of(password) if form.casefold() in text.casefold())
        assert not leaked, f"{env} leaked as {leaked}"


@pytest.mark.timeout(900)  # some 30 runs, each started through the CLI, on a loaded machine
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_no_form_of_a_password_shows_anywhere_whatever_the_driver_failure(
    engine: str,
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
    postgres_server_url: str,
    closing_server: int,
) -> None:
    server = mysql_server() if engine == "mysql" else {}
    connectors: list[tuple[str, str]] = []
    for env, failure in ((e, f) for e in PASSWORDS for f in FAILURES):
        name = f"{engine}-{env.lower().replace('_', '-')}-{failure}"
        if engine == "mysql":
            declaration = mysql_connector(name, env, failure, closed_port=closing_server, server=server)
            connectors.append((name, declaration))
            continue
        # a quoted keyword value, a URL with the value encoded, and one with it raw: the driver
        # splits that before it connects, so one failure of each password is enough there
        forms = [("kw", "quoted", env), ("url", "url", f"{env}_URL")]
        if failure == "wrong-host":
            forms.append(("raw", "url", env))
        for suffix, form, variable in forms:
            each = f"{name}-{suffix}"
            declaration = postgres_connector(each, variable, failure, closed_port=closing_server, form=form)
            connectors.append((each, declaration))
    if engine == "postgres":
        for env, form in (("PW_SPACE", "plain"), ("PW_AT", "url")):
            name = f"postgres-{env.lower().replace('_', '-')}"
            declaration = postgres_connector(
                name, env, "wrong-password", closed_port=closing_server, form=form
            )
            connectors.append((name, declaration))
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url)
    stack.env.update({**PASSWORDS, **RAW, **ENCODED})
    try:
        stack.start("worker", "worker")
        # declared first: only a declared daemon comes online (docs/health.md, undeclared daemons)
        stack.cli(
            "apply", "-f", str(stack.write_config(leak_config(connectors, home=stack.home))), check=True
        )
        stack.start("daemon", "daemon", "--name", "edge-s")
        wait_for(lambda: (d := stack.daemon("edge-s")) and d["status"] == "online", timeout=90, what="daemon")
        for name, _ in connectors:
            stack.cli("run", name, check=True)

        def finished() -> list[dict[str, object]] | None:
            runs = stack.json("runs", "--limit", "1000")["runs"]
            done = [r for r in runs if r["state"] not in {"scheduled", "queued", "running"}]
            return done if len(done) == len(connectors) else None

        runs = wait_for(finished, timeout=240, what="every run to end", stack=stack)
        assert {r["state"] for r in runs} == {"failed"}, runs
        assert all(r["error"] for r in runs)
        if engine == "mysql":  # PyMySQL cannot send it: said so, not as an unexpected error
            unicode = [str(r["error"]) for r in runs if "pw-unicode" in str(r["pipeline"])]
            assert unicode and all("characters outside Latin-1" in e for e in unicode), unicode
        assert_no_form_of_any_password(everything_written(stack, database_url))
        local = stack.home / "daemons" / "edge-s" / "applied-config.json"
        assert stat.S_IMODE(local.stat().st_mode) == 0o600
    finally:
        stack.stop_all()


LITERALS = [
    f"postgresql://127.0.0.1/test?password=lit{TAG}one",
    f"postgresql://127.0.0.1/test?password=${{env:PW_SPLIT}}&password=lit{TAG}two",
    f"postgresql://127.0.0.1/test?sslpassword=lit{TAG}three",
    f"host=127.0.0.1 password=${{env:PW_SPLIT}} password=lit{TAG}four",
]


def test_a_literal_password_is_refused_at_apply_and_stored_nowhere(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
) -> None:
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url)
    stack.cli("apply", "-f", str(stack.write_config("daemons: [{name: edge-s}]\n")), check=True)
    for dsn in LITERALS:
        config = (
            "daemons: [{name: edge-s}]\n"
            f"connectors: [{{name: pg, kind: postgres, dsn: {json.dumps(dsn)}}}]\n"
        )
        refused = stack.cli("apply", "-f", str(stack.write_config(config)))

        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "secret reference (${env:NAME} or ${file:/path})" in refused.stderr
    written = cp_tables_text(database_url) + "".join(p.read_text() for p in stack.home.glob("*.yaml"))
    assert f"lit{TAG}" not in cp_tables_text(database_url), written


# --- ordered config pushes ------------------------------------------------------------------


@pytest.mark.timeout(600)  # two daemon starts on a loaded machine
@pytest.mark.parametrize("order", [(43, 42), (42, 43)], ids=["newer-first", "older-first"])
def test_pushes_queued_to_a_stopped_daemon_end_on_the_newest_version(
    order: tuple[int, int],
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
) -> None:
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url)
    local = stack.home / "daemons" / "edge-o" / "applied-config.json"
    daemon_log = stack.home / "daemon.log"
    try:
        stack.start("worker", "worker")
        stack.start("daemon", "daemon", "--name", "edge-o")
        stack.cli("apply", "-f", str(stack.write_config("daemons: [{name: edge-o}]\n")), check=True)
        wait_for(
            lambda: (d := stack.daemon("edge-o")) and d["applied_config_version"] is not None,
            timeout=90,
            what="the first config to be applied",
            stack=stack,
        )
        stack.stop("daemon")
        app = make_celery(Settings(broker_url=stack.env["MYCELIAL_BROKER_URL"], home=stack.home))
        dispatcher = CeleryDispatcher(app)
        for version in order:
            push = ConfigPush(
                daemon="edge-o",
                version=version,
                checksum=f"sum-{version}",
                state=DesiredState(daemon="edge-o"),
            )
            dispatcher.send(apply_config_message(push, expires=600))
        app.close()

        # one thread: the queued pushes are handled in queue order (two threads take both at once)
        stack.start("daemon", "daemon", "--name", "edge-o", "--concurrency", "1")
        wait_for(
            lambda: (d := stack.daemon("edge-o")) and d["applied_config_version"] == 43,
            timeout=90,
            what="the daemon to report version 43",
            stack=stack,
        )
        handled = [(f"applied config version {v} ", f"config version {v} ignored") for v in order]
        wait_for(
            lambda: all(a in (text := daemon_log.read_text()) or i in text for a, i in handled),
            timeout=60,
            what="both pushes to be handled",
            stack=stack,
        )
        assert json.loads(local.read_text())["version"] == 43
        assert stack.daemon("edge-o")["applied_config_version"] == 43  # type: ignore[index]
        with Session(make_engine(normalize_database_url(database_url))) as session:
            kinds = [e.kind for e in session.exec(select(DaemonEvent).where(DaemonEvent.daemon == "edge-o"))]
        assert "config_failed" not in kinds
        log = daemon_log.read_text()
        assert "Traceback" not in log
        if order == (43, 42):
            assert "config version 42 ignored: version 43 is newer" in log
            assert "applied config version 42 " not in log
    finally:
        stack.stop_all()
