"""Verified TLS to databases: the control-plane database and the PostgreSQL and MySQL/MariaDB
connectors, against a throwaway PostgreSQL and MariaDB of the test's own that take only TLS
(and, for PostgreSQL, only clients with a certificate from the test's CA); and the machine's
shared servers, which have no TLS, for "the server does not do TLS". The shared servers are
never reconfigured."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from tests.conftest import Stack
from tests.movement.harness_mysql import server_options as shared_mysql_options
from tests.tls_servers import Pki, make_pki, tls_mariadb, tls_postgres
from workers.movement.errors import MovementError, RetryableError
from workers.movement.registry import make_source

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DAEMON = "db-edge"
ROWS = 25
SECRET = "Qv7ZkW2pLx9RtB4mHs6N"  # a password behind a reference: never in an error


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def pg_port(pki: Pki) -> Iterator[int]:
    with tls_postgres(pki) as port:
        yield port


@pytest.fixture(scope="module")
def maria_port(pki: Pki) -> Iterator[int]:
    with tls_mariadb(pki) as port:
        yield port


def pg_dsn(pki: Pki, port: int, database: str, *, host: str = "127.0.0.1", ca: Path | None = None) -> str:
    """libpq key=value DSN: verify-full against ``ca`` (default: the test's CA), client certificate."""
    return (
        f"host={host} port={port} dbname={database} user=postgres sslmode=verify-full "
        f"sslrootcert={ca or pki.ca.cert} sslcert={pki.client.cert} sslkey={pki.client.key}"
    )


def pg_url(pki: Pki, port: int, database: str, *, ca: Path | None = None) -> str:
    """The same as a URL, the form MYCELIAL_DATABASE_URL takes."""
    return (
        f"postgresql://postgres@127.0.0.1:{port}/{database}?sslmode=verify-full"
        f"&sslrootcert={ca or pki.ca.cert}&sslcert={pki.client.cert}&sslkey={pki.client.key}"
    )


@dataclass
class Databases:
    pg: str  # a database of the test's own on the TLS PostgreSQL
    maria: str  # and on the TLS MariaDB


@pytest.fixture
def databases(pki: Pki, pg_port: int, maria_port: int) -> Iterator[Databases]:
    made = Databases(pg=f"t_{uuid.uuid4().hex[:10]}", maria=f"t_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(pg_dsn(pki, pg_port, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {made.pg}")
    with psycopg.connect(pg_dsn(pki, pg_port, made.pg), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id integer PRIMARY KEY, item text, amount numeric(10,2))")
        conn.execute(f"INSERT INTO orders SELECT i, 'item ' || i, i * 0.5 FROM generate_series(1, {ROWS}) i")
    maria = maria_connect(pki, maria_port)
    with maria.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {made.maria}")
    yield made
    with maria.cursor() as cursor:
        cursor.execute(f"DROP DATABASE {made.maria}")
    maria.close()
    with psycopg.connect(pg_dsn(pki, pg_port, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {made.pg} WITH (FORCE)")


def maria_connect(pki: Pki, port: int, database: str | None = None) -> Any:
    from cp.tls.context import client_context

    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user="mycelial",
        database=database,
        autocommit=True,
        ssl=client_context(ca_file=pki.ca.cert),
    )


def maria_options(pki: Pki, port: int, database: str, **extra: str) -> str:
    options = {
        "kind": "mysql",
        "host": "127.0.0.1",
        "port": str(port),
        "user": "mycelial",
        "database": database,
        "ssl_mode": "verify_identity",
        "ssl_ca": str(pki.ca.cert),
        "ssl_cert": str(pki.client.cert),
        "ssl_key": str(pki.client.key),
        **extra,
    }
    return ", ".join(f"{key}: {value}" for key, value in options.items())


def test_the_control_plane_database_and_both_connectors_work_over_verified_tls(
    make_stack: Callable[..., Stack], pki: Pki, pg_port: int, maria_port: int, databases: Databases
) -> None:
    # the control plane's own tables live on the TLS PostgreSQL, reached with verify-full
    stack = make_stack(pg_url(pki, pg_port, databases.pg))
    by_address = maria_options(pki, maria_port, databases.maria, host="127.0.0.2", ssl_mode="verify_ca")
    config = f"""
daemons:
  - name: {DAEMON}
connectors:
  - {{name: pg, kind: postgres, dsn: "{pg_dsn(pki, pg_port, databases.pg)}"}}
  - {{name: maria, {maria_options(pki, maria_port, databases.maria)}}}
  # verify_ca checks the certificate but not the name: 127.0.0.2 is not in it
  - {{name: maria-by-address, {by_address}}}
  - {{name: pg-wrong-ca, kind: postgres, dsn: "{pg_dsn(pki, pg_port, databases.pg, ca=pki.other.cert)}"}}
pipelines:
  - {{name: pg-to-maria, daemon: {DAEMON}, source: {{connector: pg, table: orders}},
      destination: {{connector: maria, table: orders_copy}}}}
  - {{name: maria-to-pg, daemon: {DAEMON}, source: {{connector: maria-by-address, table: orders_copy}},
      destination: {{connector: pg, table: orders_back}}}}
  - {{name: refused, daemon: {DAEMON}, source: {{connector: pg-wrong-ca, table: orders}},
      destination: {{connector: pg, table: never}}}}
"""
    stack.start("worker", "worker", "--concurrency", "2")
    applied = stack.cli("apply", "-f", str(stack.write_config(config)))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    stack.start("daemon", "daemon", "--name", DAEMON)
    stack.wait_online(DAEMON, timeout=90)

    for pipeline in ("pg-to-maria", "maria-to-pg"):
        ran = stack.cli("run", pipeline, "--wait", "--timeout", "120")
        assert ran.returncode == 0, ran.stdout + ran.stderr + stack.logs()
        assert f"succeeded: {ROWS} rows written" in ran.stdout

    with psycopg.connect(pg_dsn(pki, pg_port, databases.pg)) as conn:
        original = conn.execute("SELECT id, item, amount FROM orders ORDER BY id").fetchall()
        back = conn.execute("SELECT id, item, amount FROM orders_back ORDER BY id").fetchall()
        # every session the control plane and the daemon opened here is encrypted
        sessions = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a"
            " JOIN pg_stat_ssl s USING (pid) WHERE a.datname = %s AND a.pid <> pg_backend_pid()",
            (databases.pg,),
        ).fetchone()
    assert back == original and len(back) == ROWS
    assert sessions is not None and sessions[0] >= 1 and sessions[0] == sessions[1]
    with maria_connect(pki, maria_port, databases.maria).cursor() as cursor:
        cursor.execute("SELECT count(*) FROM orders_copy")
        assert cursor.fetchone() == (ROWS,)

    refused = stack.cli("run", "refused", "--wait", "--timeout", "120")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    run = next(r for r in stack.json("runs")["runs"] if r["pipeline"] == "refused")
    assert run["state"] == "failed" and run["attempt"] == 1  # not retried: a retry would fail alike
    assert "cannot connect to PostgreSQL" in run["error"] and "certificate verify failed" in run["error"]


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("another CA", "certificate verify failed"),
        ("a plain server", "server does not support SSL, but SSL was required"),
    ],
)
def test_a_control_plane_database_it_cannot_verify_is_refused_with_one_line(
    make_stack: Callable[..., Stack],
    pki: Pki,
    pg_port: int,
    databases: Databases,
    postgres_server_url: str,
    what: str,
    expected: str,
) -> None:
    if what == "another CA":
        url = pg_url(pki, pg_port, databases.pg, ca=pki.other.cert)
    else:
        url = f"{postgres_server_url}?sslmode=verify-full&sslrootcert={pki.ca.cert}"
    stack = make_stack(url)
    result = stack.cli("pipelines")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: database: "), lines[0]
    assert expected in lines[0], lines[0]
    assert lines[0].endswith("(check sslmode, sslrootcert and the host in MYCELIAL_DATABASE_URL)")


def _shared_mysql() -> dict[str, Any]:
    options = shared_mysql_options()
    try:
        pymysql.connect(
            host=options["host"], port=options["port"], user=options["user"], password=options["password"]
        ).close()
    except pymysql.MySQLError as exc:
        from tests.conftest import IN_CI

        if IN_CI:
            pytest.fail(f"MariaDB/MySQL at {options['host']}:{options['port']} is required in CI: {exc}")
        pytest.skip(f"MariaDB/MySQL not available: {exc}")
    return options


CASES = ["pg: another CA", "pg: a name the certificate does not carry", "pg: a plain server"]
CASES += ["mysql: another CA", "mysql: a name the certificate does not carry", "mysql: a plain server"]
CASES += ["mysql: a CA file that does not exist"]


@pytest.mark.parametrize("case", CASES)
def test_a_connector_that_cannot_verify_its_server_fails_without_retries_and_says_why(
    case: str,
    pki: Pki,
    pg_port: int,
    maria_port: int,
    databases: Databases,
    postgres_server_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TLS_TEST_PASSWORD", SECRET)
    kind, _, what = case.partition(": ")
    options: dict[str, Any]
    if kind == "pg":
        dsn = {
            "another CA": pg_dsn(pki, pg_port, databases.pg, ca=pki.other.cert),
            "a name the certificate does not carry": pg_dsn(pki, pg_port, databases.pg, host="127.0.0.2"),
            "a plain server": f"{postgres_server_url}?sslmode=verify-full&sslrootcert={pki.ca.cert}",
        }[what]
        separator = "&" if "://" in dsn else " "
        options = {"dsn": f"{dsn}{separator}password=${{env:TLS_TEST_PASSWORD}}"}
        expected = {
            "another CA": "certificate verify failed",
            "a name the certificate does not carry": 'does not match host name "127.0.0.2"',
            "a plain server": "server does not support SSL, but SSL was required",
        }[what]
    else:
        shared = _shared_mysql() if what == "a plain server" else None
        options = {
            "host": "127.0.0.2" if what == "a name the certificate does not carry" else "127.0.0.1",
            "port": shared["port"] if shared else maria_port,
            "user": shared["user"] if shared else "mycelial",
            "password": "${env:TLS_TEST_PASSWORD}",
            "database": databases.maria,
            "ssl_mode": "verify_identity",
            "ssl_ca": str(pki.other.cert if what == "another CA" else pki.ca.cert),
            "ssl_cert": str(pki.client.cert),
            "ssl_key": str(pki.client.key),
        }
        if what == "a CA file that does not exist":
            options["ssl_ca"] = str(tmp_path / "missing-ca.pem")
        expected = {
            "another CA": "TLS certificate was refused: self-signed certificate in certificate chain",
            "a name the certificate does not carry": "IP address mismatch, certificate is not valid for",
            "a plain server": "SSL is required but the server doesn't support it",
            "a CA file that does not exist": f"CA file {tmp_path / 'missing-ca.pem'}: no such file",
        }[what]
    source = make_source("postgres" if kind == "pg" else "mysql", "shop", options, home=tmp_path)
    with pytest.raises(MovementError) as raised:
        with source:
            pass
    assert not isinstance(raised.value, RetryableError), raised.value
    message = str(raised.value)
    assert expected in message, message
    assert "\n" not in message
    assert SECRET not in message and SECRET[:12] not in message


def test_invalid_tls_options_are_refused_at_apply_one_line_each(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    stack = make_stack(make_database_url("sqlite"))
    config = stack.write_config(
        """
connectors:
  - {name: a, kind: postgres, dsn: "postgresql://u@db.internal/shop?sslmode=verify_full"}
  - {name: b, kind: postgres, dsn: "host=db.internal sslmode=require sslrootcert=/etc/ca.pem"}
  - {name: c, kind: mysql, database: shop, ssl_mode: required}
  - {name: d, kind: mysql, database: shop, ssl_ca: /etc/ca.pem}
  - {name: e, kind: mysql, database: shop, ssl_mode: verify_ca, ssl_key: /etc/client.key}
  - {name: f, kind: mysql, database: shop, ssl_mode: verify_identity, ssl_ca: "${file:/etc/ca.pem}"}
  - {name: ok1, kind: postgres, dsn: "postgresql://u@db.internal/shop?sslmode=verify-full&sslrootcert=/ca.pem"}
  - {name: ok2, kind: mysql, database: shop, ssl_mode: VERIFY_IDENTITY}
"""
    )
    result = stack.cli("apply", "-f", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 6, result.stderr
    expected = [
        "connectors[0].dsn: Value error, sslmode='verify_full' is not one of disable, allow, prefer, require,"
        " verify-ca, verify-full",
        "connectors[1].dsn: Value error, sslrootcert is given, but sslmode=require does not verify the server"
        " with it (use sslmode=verify-full)",
        "connectors[2].ssl_mode: Value error, ssl_mode 'required' is not one of disabled, preferred,"
        " verify_ca, verify_identity (required encrypts without verifying: use verify_identity)",
        "connectors[3].ssl_mode: Value error, ssl_ca given, but ssl_mode preferred does not verify the server"
        " (use ssl_mode: verify_identity)",
        "connectors[4].ssl_mode: Value error, ssl_key needs ssl_cert (the client certificate) too",
        "connectors[5].ssl_ca: a secret reference is not allowed here (a mysql connector takes one only in"
        " password)",
    ]
    for line, text in zip(lines, expected, strict=True):
        assert line.startswith("error: ") and line.endswith(text), f"{line}\n!= {text}"
    assert stack.json("config", "history")["versions"] == []

    refused = stack.cli("pipelines", "--json")
    assert refused.returncode == 0
    stack.env["MYCELIAL_DATABASE_URL"] = "postgresql://u@db.internal/cp?sslrootcert=/etc/ca.pem"
    refused = stack.cli("pipelines")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: invalid settings: MYCELIAL_DATABASE_URL: Value error, sslrootcert is given, but"
        " sslmode=prefer does not verify the server with it (use sslmode=verify-full)"
    )
