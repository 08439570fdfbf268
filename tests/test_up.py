"""`mycelial up --demo` on a machine with nothing running: embedded Redis, SQLite, all processes,
Flower with basic auth; SIGTERM stops every child and the embedded Redis."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def processes_mentioning(text: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def http_status(url: str, *, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_up_demo_runs_the_whole_stack_and_sigterm_stops_everything() -> None:
    home = Path(tempfile.mkdtemp(prefix="mycup"))  # short: the Redis socket path must fit a sun_path
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env.update(
        MYCELIAL_HOME=str(home),
        MYCELIAL_FLOWER_PORT=str(port),
        MYCELIAL_METRICS_PORT=str(metrics_port),
        PYTHONUNBUFFERED="1",
    )
    log = open(home / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "cp.cli", "up", "--demo"], env=env, stdout=log, stderr=subprocess.STDOUT
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cp.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )

    def up_log() -> str:
        return (home / "up.log").read_text(errors="replace")[-6000:]

    try:

        def local_online() -> bool:
            result = cli("daemons", "--json")
            if result.returncode != 0:
                return False
            daemons = json.loads(result.stdout)["daemons"]
            return any(
                d["name"] == "local" and d["status"] == "online" and d["applied_config_version"] == 1
                for d in daemons
            )

        wait_for(local_online, timeout=90, what=f"daemon local online with the demo config\n{up_log()}")
        assert (home / "mycelial.db").exists()
        assert "Flower: http://127.0.0.1:" in up_log()

        ran = cli("run", "orders-to-warehouse", "--wait", "--timeout", "60")
        assert ran.returncode == 0, ran.stderr + up_log()
        assert "succeeded: 5000 rows written" in ran.stdout

        credentials = (home / "flower-credentials").read_text().strip()
        assert (home / "flower-credentials").stat().st_mode & 0o077 == 0
        assert credentials.split(":", 1)[1] in (home / "up.log").read_text()  # printed at start
        assert "daemon@local ready" in (home / "logs" / "daemon-local.log").read_text()
        flower = f"http://127.0.0.1:{port}/api/workers"
        wait_for(lambda: http_status(flower, auth=credentials) == 200, timeout=30, what="Flower answering")
        assert http_status(flower) == 401
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(lambda: http_status(metrics) == 200, timeout=30, what=f"/metrics answering\n{up_log()}")
        with urllib.request.urlopen(metrics, timeout=10) as response:
            assert 'mycelial_daemon_status{daemon="local",status="online"} 1.0' in response.read().decode()

        children = children_of(up.pid)  # worker, beat, daemon, Flower, metrics
        redis_servers = processes_mentioning(str(home / "redis" / "redis.socket"))
        assert len(children) == 5 and redis_servers
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            code = up.wait(timeout=40)
        finally:
            if up.poll() is None:
                up.kill()
            log.close()

    assert code == 0, up_log()
    time.sleep(0.5)
    still_running = [
        pid
        for pid in children | redis_servers
        if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    ]
    assert still_running == [], up_log()
    assert "stopped" in up_log()
