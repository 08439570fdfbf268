"""rediss:// end to end against a TLS Redis of the test's own, with a CA made in the test.

Every process (control-plane worker, beat, a daemon, Flower, the CLI, Celery's admin CLI) and the
code that talks to Redis directly (heartbeat keys, queue depth, orphaned jobs, dead letters) works
over a verified connection; a client that trusts another CA, reaches the broker by a name its
certificate does not carry, or has no client certificate is refused, with one line that says so.
``SSL_CERT_FILE`` stands in for the system's trust store (OpenSSL reads its default store there).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cp.embedded_redis import redis_client
from cp.messaging import dead_letters
from cp.protocol import daemon_queue, heartbeat_key
from cp.tls.broker import BrokerTls
from tests.conftest import Stack, wait_for
from tests.tls_servers import Pki, free_port, make_pki, tls_redis

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DAEMON = "tls-edge"
ROWS = 40
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_port(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Redis that speaks only TLS and asks every client for a certificate from the CA."""
    with tls_redis(tmp_path_factory.mktemp("redis"), pki, auth_clients="yes") as port:
        yield port


def rediss_url(port: int, *, host: str = "127.0.0.1") -> str:
    return f"rediss://{host}:{port}/{next(_databases) % 16}"


def tls_settings(pki: Pki, *, ca: Path | None) -> dict[str, str]:
    """make_stack settings for a client that presents the CA's client certificate."""
    found = {"broker_cert_file": str(pki.client.cert), "broker_key_file": str(pki.client.key)}
    if ca is not None:
        found["broker_ca_file"] = str(ca)
    return found


def tls(pki: Pki, *, ca: Path | None) -> BrokerTls:
    return BrokerTls(ca_file=ca, cert_file=pki.client.cert, key_file=pki.client.key)


@pytest.fixture
def source_schema(postgres_server_url: str) -> Iterator[str]:
    """A PostgreSQL schema with ``orders`` (ROWS rows), dropped afterwards."""
    schema = f"mycelial_tls_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.orders (id integer PRIMARY KEY, amount numeric(10,2))")
        conn.execute(f"INSERT INTO {schema}.orders SELECT i, i * 1.25 FROM generate_series(1, {ROWS}) AS i")
    yield schema
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def pipeline_config(dsn: str, schema: str) -> str:
    # PostgreSQL connectors: the broker is what this test is about, and they need no file paths
    return f"""
daemons:
  - name: {DAEMON}
connectors:
  - {{name: shop, kind: postgres, dsn: "{dsn}", schema: {schema}}}
  - {{name: warehouse, kind: postgres, dsn: "{dsn}", schema: {schema}}}
pipelines:
  - name: orders
    source: {{connector: shop, table: orders}}
    destination: {{connector: warehouse, table: orders_copy}}
    batch_size: 9
    daemon: {DAEMON}
"""


def http_get(url: str, *, auth: str) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            return int(response.status), json.loads(body) if body[:1] in (b"{", b"[") else body
    except urllib.error.HTTPError as exc:
        return int(exc.code), None
    except OSError:
        return 0, None


def test_every_process_and_every_direct_client_works_over_verified_rediss(
    make_stack: Callable[..., Stack],
    make_database_url: Callable[[str], str],
    pki: Pki,
    tls_port: int,
    source_schema: str,
    postgres_server_url: str,
) -> None:
    url = rediss_url(tls_port)
    stack = make_stack(make_database_url("sqlite"), broker_url=url, **tls_settings(pki, ca=pki.ca.cert))
    client = redis_client(url, tls=tls(pki, ca=pki.ca.cert))
    flower_port = free_port()

    stack.start("worker", "worker", "--concurrency", "2")
    stack.start("beat", "beat")
    applied = stack.cli(
        "apply", "-f", str(stack.write_config(pipeline_config(postgres_server_url, source_schema)))
    )
    assert applied.returncode == 0, applied.stderr
    assert f"pushed version 1 to daemon {DAEMON}" in applied.stdout, applied.stdout + applied.stderr
    stack.start("daemon", "daemon", "--name", DAEMON)
    stack.start("flower", "flower", "--port", str(flower_port))
    stack.wait_online(DAEMON, timeout=90)

    ran = stack.cli("run", "orders", "--wait", "--timeout", "120")
    assert ran.returncode == 0, ran.stdout + ran.stderr + stack.logs()
    assert f"succeeded: {ROWS} rows written" in ran.stdout
    with psycopg.connect(postgres_server_url) as conn:
        copied = conn.execute(f"SELECT count(*), sum(amount) FROM {source_schema}.orders_copy").fetchone()
    assert copied is not None and copied[0] == ROWS

    # heartbeats: the daemon's key is in the TLS Redis and the control plane read it
    assert client.get(heartbeat_key(DAEMON)) is not None
    daemon = stack.daemon(DAEMON)
    assert daemon is not None and daemon["last_heartbeat_age_s"] is not None
    assert daemon["applied_config_version"] == 1
    # queue depth, read by the health check over its own broker connection
    wait_for(lambda: (d := stack.daemon(DAEMON)) and d["queue_depth"] == 0, timeout=30, what="queue depth")

    # dead letters: a push that is not a message is dead-lettered by the daemon's guarded channel
    queue = daemon_queue(DAEMON)
    client.lpush(queue, b"not json at all")
    wait_for(lambda: dead_letters.read(client, queue), timeout=30, what="a dead letter", stack=stack)
    assert dead_letters.read(client, queue)[0]["reason"].startswith("not a JSON message")

    # Flower: its event consumer sees the daemon, its own Redis client reads the queue lengths
    credentials = (stack.home / "flower-credentials").read_text(encoding="utf-8").strip()
    wait_for(
        lambda: http_get(f"http://127.0.0.1:{flower_port}/api/workers?refresh=1", auth=credentials)[0] == 200,
        timeout=60,
        what="Flower answering",
        stack=stack,
    )

    def flower_queue_lengths() -> Any:
        status, body = http_get(f"http://127.0.0.1:{flower_port}/api/queues/length", auth=credentials)
        names = {q["name"] for q in (body or {}).get("active_queues", [])} if status == 200 else set()
        return queue in names

    wait_for(flower_queue_lengths, timeout=60, what="Flower's queue lengths", stack=stack)

    # Celery's own CLI for admins, with the same settings
    inspect = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cp.admin", "inspect", "ping", "-d", f"daemon@{DAEMON}"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspect.returncode == 0 and "pong" in inspect.stdout, inspect.stdout + inspect.stderr

    # beat published its housekeeping over TLS and the worker took it
    worker_log = (stack.home / "worker.log").read_text(errors="replace")
    assert "Task cp.check_daemon_health[" in worker_log and "Task cp.send_probes[" in worker_log

    logs = stack.logs()
    assert "could not look for jobs" not in logs  # orphans.py reached the broker at the daemon's start
    assert "not delivered" not in logs  # no heartbeat failed to be written
    assert "cannot read heartbeat keys" not in logs


def test_a_client_trusting_another_ca_is_refused_with_one_line(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], pki: Pki, tls_port: int
) -> None:
    url = rediss_url(tls_port)
    good = redis_client(url, tls=tls(pki, ca=pki.ca.cert))
    stack = make_stack(make_database_url("sqlite"), broker_url=url, **tls_settings(pki, ca=pki.other.cert))
    config = stack.write_config(
        f"""
daemons:
  - name: {DAEMON}
connectors:
  - {{name: s, kind: sqlite, path: /nowhere/s.db}}
  - {{name: d, kind: sqlite, path: /nowhere/d.db}}
pipelines:
  - {{name: p, daemon: {DAEMON}, source: {{connector: s, table: t}}, destination: {{connector: d, table: t}}}}
"""
    )

    applied = stack.cli("apply", "-f", str(config))
    assert applied.returncode == 0, applied.stderr  # stored; the push waits for the daemon
    assert "could not be pushed now (broker: the server's TLS certificate was refused" in applied.stderr
    assert good.llen(daemon_queue(DAEMON)) == 0

    refused = stack.cli("run", "p")
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("error: run p@manual-") and "could not publish the job (broker: " in lines[0]
    assert "the server's TLS certificate was refused: " in lines[0]
    assert "MYCELIAL_BROKER_CA_FILE" in lines[0]
    assert good.llen(daemon_queue(DAEMON)) == 0

    # a daemon that trusts the wrong CA never speaks: it says why and keeps trying
    stack.start("daemon", "daemon", "--name", DAEMON)
    wait_for(
        lambda: "certificate verify failed" in (stack.home / "daemon.log").read_text(errors="replace"),
        timeout=60,
        what="the daemon's refusal in its log",
        stack=stack,
    )
    assert stack.procs["daemon"].poll() is None, stack.logs()
    assert good.get(heartbeat_key(DAEMON)) is None
    assert good.keys("*") == []  # nothing at all reached the broker


@pytest.mark.parametrize(
    ("what", "host", "settings", "expected"),
    [
        ("a host name the certificate does not carry", "127.0.0.2", "client", "refused: IP address mismatch"),
        ("no client certificate", "127.0.0.1", "no-client-cert", "check MYCELIAL_BROKER_CERT_FILE"),
        ("a client certificate from another CA", "127.0.0.1", "stranger", "check MYCELIAL_BROKER_CERT_FILE"),
    ],
)
def test_a_connection_the_broker_or_the_client_cannot_verify_is_refused(
    make_stack: Callable[..., Stack],
    make_database_url: Callable[[str], str],
    pki: Pki,
    tls_port: int,
    what: str,
    host: str,
    settings: str,
    expected: str,
) -> None:
    db = next(_databases) % 16
    url = f"rediss://{host}:{tls_port}/{db}"
    good = redis_client(f"rediss://127.0.0.1:{tls_port}/{db}", tls=tls(pki, ca=pki.ca.cert))
    chosen = {
        "client": tls_settings(pki, ca=pki.ca.cert),
        "no-client-cert": {"broker_ca_file": str(pki.ca.cert)},
        "stranger": {
            "broker_ca_file": str(pki.ca.cert),
            "broker_cert_file": str(pki.stranger.cert),
            "broker_key_file": str(pki.stranger.key),
        },
    }[settings]
    stack = make_stack(make_database_url("sqlite"), broker_url=url, **chosen)
    stack.write_config(f"daemons:\n  - name: {DAEMON}\n")
    applied = stack.cli("apply", "-f", str(stack.home / "config.yaml"))
    assert applied.returncode == 0, applied.stderr
    assert "could not be pushed now (" in applied.stderr, f"{what}: {applied.stderr}"
    assert expected in applied.stderr, applied.stderr
    assert len(applied.stderr.strip().splitlines()) == 1, applied.stderr
    assert good.llen(daemon_queue(DAEMON)) == 0


def _cli_env(stack: Stack, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in stack.env.items() if k != "SSL_CERT_FILE"}
    env.update(extra)
    return env


def test_without_a_ca_file_the_system_trust_store_verifies_and_a_ca_file_is_trusted_alone(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], pki: Pki, tls_port: int
) -> None:
    url = rediss_url(tls_port)
    good = redis_client(url, tls=tls(pki, ca=pki.ca.cert))
    stack = make_stack(make_database_url("sqlite"), broker_url=url, **tls_settings(pki, ca=None))
    config = str(stack.write_config(f"daemons:\n  - name: {DAEMON}\n"))

    def apply(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        good.delete(daemon_queue(DAEMON))
        return subprocess.run(
            [*stack.cli_argv("apply", "-f", config, "-m", str(uuid.uuid4()), "--allow-empty")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # the CA is in the "system" store: verified and accepted
    trusted = apply(_cli_env(stack, SSL_CERT_FILE=str(pki.ca.cert)))
    assert trusted.returncode == 0 and "pushed version" in trusted.stdout, trusted.stdout + trusted.stderr
    assert good.llen(daemon_queue(DAEMON)) == 1

    # the system's real store does not hold the test's CA: refused, not connected unverified
    stack.write_config(f"daemons:\n  - name: {DAEMON}\n    labels: {{v: '2'}}\n")
    untrusted = apply(_cli_env(stack))
    assert "the server's TLS certificate was refused" in untrusted.stderr, untrusted.stdout + untrusted.stderr
    assert good.llen(daemon_queue(DAEMON)) == 0

    # a CA file is trusted alone: the "system" store holding the right CA does not help
    stack.write_config(f"daemons:\n  - name: {DAEMON}\n    labels: {{v: '3'}}\n")
    pinned = apply(
        _cli_env(stack, SSL_CERT_FILE=str(pki.ca.cert), MYCELIAL_BROKER_CA_FILE=str(pki.other.cert))
    )
    assert "the server's TLS certificate was refused" in pinned.stderr, pinned.stdout + pinned.stderr
    assert good.llen(daemon_queue(DAEMON)) == 0


def test_direct_redis_clients_verify_like_celery(
    pki: Pki, tls_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis_client and Flower's broker client: the right CA connects, another is refused, and a CA
    file is trusted alone even when the system's store would accept the server."""
    from flower.utils import broker as flower_broker
    from flower.utils.broker import Broker

    from cp.tls.flower import verify_flower_broker_client

    monkeypatch.setattr(flower_broker, "RedisSsl", flower_broker.RedisSsl)  # restored afterwards

    url = rediss_url(tls_port)
    assert redis_client(url, tls=tls(pki, ca=pki.ca.cert)).ping()
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert))
    assert redis_client(url, tls=tls(pki, ca=None)).ping()
    with pytest.raises(Exception, match="certificate verify failed"):
        redis_client(url, tls=tls(pki, ca=pki.other.cert)).ping()

    def flower_queue_lengths(options: dict[str, Any]) -> Any:
        broker = Broker(url, broker_use_ssl=options, broker_options={})
        return asyncio.run(broker.queues(["some.queue"]))

    pinned = tls(pki, ca=pki.other.cert).redis_options()
    # Flower as it comes adds the CA file to the system's store, so it would accept this server
    assert flower_queue_lengths(pinned) == [{"name": "some.queue", "messages": 0}]
    verify_flower_broker_client()
    with pytest.raises(Exception, match="certificate verify failed"):
        flower_queue_lengths(pinned)
    right = tls(pki, ca=pki.ca.cert).redis_options()
    assert flower_queue_lengths(right) == [{"name": "some.queue", "messages": 0}]
    monkeypatch.delenv("SSL_CERT_FILE")
    assert flower_queue_lengths(right) == [{"name": "some.queue", "messages": 0}]
    with pytest.raises(Exception, match="certificate verify failed"):
        flower_queue_lengths(tls(pki, ca=None).redis_options())
