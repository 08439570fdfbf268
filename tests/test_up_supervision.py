"""`mycelial up` keeps its stack running: a child that dies (SIGKILL) or is shut down by an admin
(`celery -A cp.admin control shutdown -d daemon@local`) is started again and answers again, the
stack stays up, and SIGTERM still stops everything with exit code 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import Broker, wait_for
from tests.test_up import children_of, free_port

pytestmark = pytest.mark.integration


def daemon_child(up: subprocess.Popen[bytes]) -> int | None:
    """The pid of the local daemon `up` runs now, if one runs."""
    out = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"daemon --name local" in cmdline:
            return pid
    return None


def alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


def test_up_starts_a_daemon_again_after_a_kill_and_an_admin_shutdown_and_stops_on_sigterm(
    broker: Broker,
) -> None:
    home = Path(tempfile.mkdtemp(prefix="mycsup"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env.update(
        MYCELIAL_HOME=str(home),
        MYCELIAL_BROKER_URL=broker.fresh_url(),
        MYCELIAL_FLOWER_PORT=str(free_port()),
        MYCELIAL_METRICS_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    log = open(home / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "cp.cli", "up"], env=env, stdout=log, stderr=subprocess.STDOUT
    )

    def up_log() -> str:
        return (home / "up.log").read_text(errors="replace")[-6000:]

    def celery_admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "cp.admin", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def answers_ping(pid: int) -> bool:
        """The daemon with ``pid`` runs and daemon@local answers a ping."""
        if daemon_child(up) != pid:
            return False
        done = celery_admin("inspect", "ping", "-d", "daemon@local", "--json", "--timeout", "3")
        return done.returncode == 0 and '"pong"' in done.stdout

    def restarted_after(old: int) -> int:
        new = wait_for(
            lambda: (pid := daemon_child(up)) not in (None, old) and pid,
            timeout=60,
            what=f"a new daemon after pid {old}\n{up_log()}",
        )
        wait_for(lambda: answers_ping(new), timeout=60, what=f"daemon pid {new} answering\n{up_log()}")
        return int(new)

    seen: set[int] = set()
    try:
        first = wait_for(lambda: daemon_child(up), timeout=60, what=f"the daemon child\n{up_log()}")
        wait_for(lambda: answers_ping(first), timeout=90, what=f"daemon@local answering\n{up_log()}")
        others = children_of(up.pid) - {first}  # worker, beat, Flower, metrics
        assert len(others) == 4, up_log()
        seen |= others | {first}

        os.kill(first, signal.SIGKILL)
        second = restarted_after(first)
        assert up.poll() is None, up_log()
        assert f"daemon-local (pid {first}) was killed by SIGKILL" in up_log()
        seen.add(second)

        shutdown = celery_admin("control", "shutdown", "-d", "daemon@local")
        assert "No nodes replied" in shutdown.stderr or shutdown.returncode == 0, shutdown.stderr
        third = restarted_after(second)
        assert up.poll() is None, up_log()
        assert f"daemon-local (pid {second}) exited with code 0" in up_log()
        seen.add(third)
        daemon_log = (home / "logs" / "daemon-local.log").read_text(errors="replace")
        assert daemon_log.count("daemon@local ready") == 3
        assert children_of(up.pid) == others | {third}  # the rest of the stack went on as it was
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
    assert [pid for pid in seen if alive(pid)] == [], up_log()
    assert "stopped" in up_log()
