"""What an operator's machine exposes, tried as a neighbour on it would: every Flower URL asks for
the credentials (``/metrics`` and ``/healthcheck`` too), every listener is on 127.0.0.1 unless told
otherwise, the password is shown once when it is created and never lands in a log, an argv or an
environment, and the home with everything the processes keep in it is 0700/0600."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from cp.cli.flower_server import CREDENTIALS_FILE
from tests.conftest import Stack, wait_for
from tests.test_up import free_port, processes_mentioning

pytestmark = pytest.mark.integration

FLOWER_URLS = ["/metrics", "/healthcheck", "/api/tasks", "/api/workers", "/", "/static/css/flower.css"]


# --- what is checked ---------------------------------------------------------------------


def status(port: int, path: str, *, auth: tuple[str, str] | None = None, method: str = "GET") -> int:
    try:
        return httpx.request(method, f"http://127.0.0.1:{port}{path}", auth=auth, timeout=5).status_code
    except httpx.TransportError:
        return 0


def assert_every_url_needs_the_credentials(port: int, user: str, password: str) -> None:
    for path in FLOWER_URLS:
        assert status(port, path) == 401, path
        assert status(port, path, auth=(user, password + "x")) == 401, path
        assert status(port, path, auth=(user, password)) == 200, path
    assert status(port, "/no/such/page") == 401
    assert status(port, "/no/such/page", auth=(user, password)) == 404
    assert status(port, "/api/task/async-apply/daemon.run_job", method="POST") == 401
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", auth=(user, password), timeout=5).text
    assert "flower_events_total" in metrics  # what the credentials protect is really served


def listening(processes: list[psutil.Process]) -> dict[int, list[tuple[str, int]]]:
    """Each process's listening TCP sockets (IPv4 and IPv6), as (address, port)."""
    found: dict[int, list[tuple[str, int]]] = {}
    for process in processes:
        with_sockets = process.net_connections(kind="inet")
        found[process.pid] = [
            (c.laddr.ip, c.laddr.port) for c in with_sockets if c.status == psutil.CONN_LISTEN
        ]
    return found


def reveals(process: psutil.Process, secret: str) -> list[str]:
    """Where a process shows ``secret`` to whoever may read its /proc entries."""
    shown = []
    for name in ("cmdline", "environ"):
        if secret.encode() in Path(f"/proc/{process.pid}/{name}").read_bytes():
            shown.append(f"{process.pid} {name}")
    return shown


def loose_entries(home: Path) -> list[str]:
    """Everything under ``home`` that is not a 0700 folder or a 0600 file. A Unix socket only has
    to be closed to group and others: its execute bits mean nothing, and Redis sets 0700."""
    loose = []
    for folder, dirs, files in os.walk(home):
        for name in (".", *dirs, *files):
            path = Path(folder) / name if name != "." else Path(folder)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                ok = mode == 0o700
            elif stat.S_ISREG(st.st_mode):
                ok = mode == 0o600
            elif stat.S_ISSOCK(st.st_mode):
                ok = mode & 0o077 == 0
            else:
                ok = False  # nothing here should be a link or a device
            if not ok:
                loose.append(f"{path} {mode:04o}")
    return loose


def files_holding(home: Path, secret: str) -> list[str]:
    return [
        str(path.relative_to(home))
        for path in home.rglob("*")
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes()
    ]


def credentials(home: Path) -> tuple[str, str]:
    user, _, password = (home / CREDENTIALS_FILE).read_text().strip().partition(":")
    return user, password


# --- mycelial up ---------------------------------------------------------------------------


class Up:
    """``mycelial up`` in the background, its output in a file outside the home."""

    def __init__(self, home: Path, env: dict[str, str], output: Path, *args: str) -> None:
        self.home, self.output = home, output
        self._log = open(output, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cp.cli", "up", *args], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """`up`, its children and the embedded redis-server (which daemonizes itself)."""
        root = psutil.Process(self.process.pid)
        redis = [psutil.Process(p) for p in processes_mentioning(str(self.home / "redis" / "redis.socket"))]
        return [root, *root.children(recursive=True), *redis]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def up_home(tmp_path: Path) -> Iterator[tuple[Path, Callable[..., Up]]]:
    home = Path(tempfile.mkdtemp(prefix="mycsf"))  # short: the Redis socket path must fit a sun_path
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env.update(
        MYCELIAL_HOME=str(home),
        MYCELIAL_FLOWER_PORT=str(port),
        MYCELIAL_METRICS_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    started: list[Up] = []

    def start(*args: str) -> Up:
        up = Up(home, env, tmp_path / f"up-{len(started) + 1}.out", *args)
        started.append(up)
        return up

    start.port = port  # type: ignore[attr-defined]
    start.env = env  # type: ignore[attr-defined]
    yield home, start
    for up in started:
        up.stop()
    shutil.rmtree(home, ignore_errors=True)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cp.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def local_daemon(env: dict[str, str]) -> dict[str, Any] | None:
    result = cli(env, "daemons", "--json")
    if result.returncode != 0:
        return None
    return next((d for d in json.loads(result.stdout)["daemons"] if d["name"] == "local"), None)


def test_up_exposes_flower_on_loopback_behind_auth_and_keeps_the_home_private(
    up_home: tuple[Path, Callable[..., Up]],
) -> None:
    home, start = up_home
    port, env = start.port, start.env  # type: ignore[attr-defined]
    home.chmod(0o755)  # as an older release (or mkdir with the usual umask) left it

    first = start("--demo")
    wait_for(
        lambda: (
            (d := local_daemon(env)) is not None and d["status"] == "online" and d["applied_config_version"]
        ),
        timeout=90,
        what=f"daemon local online with the demo config\n{first.text()}",
    )
    ran = cli(env, "run", "orders-to-warehouse", "--wait", "--timeout", "60")
    assert ran.returncode == 0, ran.stderr + first.text()
    user, password = credentials(home)
    wait_for(lambda: status(port, "/healthcheck", auth=(user, password)) == 200, timeout=30, what="Flower")

    assert_every_url_needs_the_credentials(port, user, password)
    tasks = wait_for(
        lambda: (
            "daemon.run_job"
            in (t := httpx.get(f"http://127.0.0.1:{port}/api/tasks", auth=(user, password)).text)
            and t
        ),
        timeout=30,
        what="Flower's API to list the job",
    )
    assert "orders-to-warehouse" in tasks

    processes = first.processes()
    sockets = listening(processes)
    assert (("127.0.0.1", port)) in [s for found in sockets.values() for s in found]
    assert {addr for found in sockets.values() for addr, _ in found} == {"127.0.0.1"}, sockets
    redis_pids = processes_mentioning(str(home / "redis" / "redis.socket"))
    assert redis_pids and all(sockets[pid] == [] for pid in redis_pids)  # its socket file only
    assert [shown for p in processes for shown in reveals(p, password)] == []
    assert processes_mentioning(password) == set()

    assert first.text().count(password) == 1, first.text()  # printed once, by the `up` that made it
    assert loose_entries(home) == []
    assert files_holding(home, password) == [CREDENTIALS_FILE]
    first.stop()

    # what an older release left readable is tightened when the next one starts
    for loosened in [
        home / "mycelial.db",
        *(home / "logs").glob("*.log"),
        home / "daemons/local/applied-config.json",
    ]:
        loosened.chmod(0o644)
    for folder in (home / "logs", home / "daemons" / "local"):
        folder.chmod(0o755)

    second = start()
    wait_for(lambda: "Flower:" in second.text(), timeout=60, what=f"the second up\n{second.text()}")
    wait_for(lambda: status(port, "/metrics", auth=(user, password)) == 200, timeout=60, what="Flower again")
    wait_for(
        lambda: (d := local_daemon(env)) is not None and d["status"] == "online",
        timeout=60,
        what="daemon local online again",
    )
    assert password not in second.text() and str(home / CREDENTIALS_FILE) in second.text()
    assert (home / "logs" / "flower.log").read_text().count(password) == 0
    assert loose_entries(home) == []
    second.stop()

    assert loose_entries(home) == []
    assert files_holding(home, password) == [CREDENTIALS_FILE]


# --- mycelial flower -----------------------------------------------------------------------


def start_flower(stack: Stack, output: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(output, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cp.cli", "flower", *args],
            env=stack.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_flower_alone_shows_its_new_password_once_and_then_only_where_it_is(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    stack = make_stack(make_database_url("sqlite"))
    port = free_port()

    flower = start_flower(stack, tmp_path / "flower-1.out", "--port", str(port))
    try:
        wait_for(lambda: (stack.home / CREDENTIALS_FILE).exists(), timeout=30, what="credentials")
        user, password = credentials(stack.home)
        wait_for(
            lambda: status(port, "/healthcheck", auth=(user, password)) == 200, timeout=30, what="Flower"
        )
        assert_every_url_needs_the_credentials(port, user, password)
        process = psutil.Process(flower.pid)
        assert listening([process])[flower.pid] == [("127.0.0.1", port)]
        assert reveals(process, password) == []
    finally:
        stop(flower)
    first = (tmp_path / "flower-1.out").read_text()
    assert first.count(password) == 1, first

    flower = start_flower(stack, tmp_path / "flower-2.out", "--port", str(port))
    try:
        wait_for(
            lambda: status(port, "/metrics", auth=(user, password)) == 200, timeout=30, what="Flower again"
        )
        assert status(port, "/metrics") == 401
    finally:
        stop(flower)
    second = (tmp_path / "flower-2.out").read_text()
    assert password not in second and str(stack.home / CREDENTIALS_FILE) in second
    assert files_holding(stack.home, password) == [CREDENTIALS_FILE]


def test_flower_listens_on_another_address_only_when_told_and_says_so(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    stack = make_stack(make_database_url("sqlite"))
    port = free_port()

    flower = start_flower(stack, tmp_path / "flower.out", "--address", "0.0.0.0", "--port", str(port))
    try:
        wait_for(lambda: status(port, "/healthcheck") == 401, timeout=30, what="Flower")
        assert listening([psutil.Process(flower.pid)])[flower.pid] == [("0.0.0.0", port)]
    finally:
        stop(flower)
    assert "warning: Flower listens on 0.0.0.0" in (tmp_path / "flower.out").read_text()


# --- the home --------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user owns needs root")
def test_a_home_another_user_owns_is_refused_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env.update(MYCELIAL_HOME=str(home))

    result = cli(env, "config", "history")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "belongs to uid 65534" in result.stderr, result.stderr
    assert list(home.iterdir()) == []  # no database, no key, nothing was created in it
