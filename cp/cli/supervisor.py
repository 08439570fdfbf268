"""``mycelial up``: run the whole stack (worker, beat, local daemon, Flower, metrics) as child
processes, start again any that exits (with backoff, cp/cli/backoff.py), and stop all of them
together on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from cp.celery_app import make_celery
from cp.cli import security_commands
from cp.cli.backoff import RestartBackoff
from cp.cli.demo import prepare_demo
from cp.cli.flower_server import announce, flower_credentials
from cp.cli.output import EXIT_OK, info, warn
from cp.cli.rotating_output import ChildOutput, Rotation, child_output
from cp.embedded_redis import EmbeddedRedis
from cp.private_files import private_dir
from cp.settings import Settings

STOP_GRACE = 10.0  # seconds a child gets after SIGTERM before SIGKILL
PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # monotonic
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    restart_at: float | None = None  # monotonic; set while an exited child waits to start again


@dataclass
class Stack:
    children: list[Child] = field(default_factory=list)
    stopping: bool = False
    rotation: Rotation = field(default_factory=Rotation)
    outputs: list[ChildOutput] = field(default_factory=list)

    def start(self, env: dict[str, str], *, log_dir: Path, only: list[Child] | None = None) -> None:
        """Start every child (or those in ``only``), each writing to its own log file."""
        private_dir(log_dir)
        self.outputs = [output for output in self.outputs if not output.wait(timeout=0)]
        for child in self.children if only is None else only:
            log_path = log_dir / f"{child.name.replace(' ', '-')}.log"
            with child_output(log_path, self.rotation) as log:
                self.outputs.append(log)
                # own session: a terminal's Ctrl-C reaches only `up`, which then stops children in order
                child.process = subprocess.Popen(
                    child.argv,
                    env={**env, **child.env},
                    stdout=log.write_fd,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                    start_new_session=True,
                )
            child.started_at = time.monotonic()
            child.restart_at = None
            info(f"  started {child.name:<13} pid {child.process.pid}")

    def due_for_restart(self, *, now: float, log_dir: Path) -> list[Child]:
        """Children to start again now. A child that just exited is told, with its exit code, and
        given a time to start again (its backoff); nothing here stops the stack."""
        due = []
        for child in self.children:
            if child.restart_at is None and child.process and child.process.poll() is not None:
                delay = child.backoff.delay(ran_for=now - child.started_at)
                child.restart_at = now + delay
                warn(
                    f"{child.name} (pid {child.process.pid}) {exit_description(child.process.returncode)} "
                    f"after {now - child.started_at:.0f}s; starting it again in {delay:.0f}s "
                    f"(see {log_dir}/)"
                )
            if child.restart_at is not None and now >= child.restart_at:
                due.append(child)
        return due

    def stop(self) -> None:
        self.stopping = True
        alive = [c for c in self.children if c.process and c.process.poll() is None]
        for child in alive:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for child in alive:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                warn(f"{child.name} did not stop within {STOP_GRACE:.0f}s; killing it")
                child.process.kill()
                child.process.wait()
        for output in self.outputs:  # the children's last lines, into their files
            output.wait(timeout=2.0)


def exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _die_with_parent() -> None:
    """Linux: children get SIGTERM if `mycelial up` itself is killed, so nothing is left running."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


LOCAL_DAEMON = "local"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cp.cli", *args]


def run_stack(settings: Settings, *, demo: bool) -> int:
    """Run the stack until SIGINT or SIGTERM. The caller made the home private."""
    env = dict(os.environ)
    redis: EmbeddedRedis | None = None
    if not settings.broker_url:
        redis = EmbeddedRedis(settings.embedded_redis_socket)
        env["MYCELIAL_BROKER_URL"] = redis.start()
        info(f"embedded Redis on {redis.socket_path}")
    env["MYCELIAL_HOME"] = str(settings.home)

    # the local daemon is enrolled on its first start, as an operator would (docs/security.md)
    local_env = {}
    if not (settings.home / "daemons" / LOCAL_DAEMON / "identity.pem").exists():
        local_env["MYCELIAL_ENROLL_TOKEN"] = security_commands.enroll(settings, name=LOCAL_DAEMON, ttl=600)
    stack = Stack(
        [
            Child("worker", _cli("worker")),
            Child("beat", _cli("beat")),
            Child(
                "daemon-local",
                _cli("daemon", "--name", LOCAL_DAEMON, "--labels", "site=local"),
                env=local_env,
            ),
            Child("flower", _cli("flower")),
            Child("metrics", _cli("metrics")),
        ],
        rotation=Rotation(max_bytes=settings.process_log_max_bytes, backups=settings.process_log_backups),
    )
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous: dict[int, Callable[..., object] | int | None] = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        info(f"home: {settings.home}   database: {settings.effective_database_url}")
        # before Flower starts: this terminal shows a new password once, Flower's log file never
        credentials = flower_credentials(settings.home)
        log_dir = settings.home / "logs"
        stack.start(env, log_dir=log_dir)
        info(f"logs: {log_dir}/")
        announce(credentials, url=f"http://{settings.flower_address}:{settings.flower_port}")
        info(f"metrics: http://{settings.metrics_address}:{settings.metrics_port}/metrics")
        if demo:
            demo_env_settings = Settings(
                home=settings.home,
                broker_url=env["MYCELIAL_BROKER_URL"],
                database_url=settings.database_url,
            )
            prepare_demo(demo_env_settings, app_factory=make_celery)
        info("press Ctrl-C to stop everything")
        while not received:
            # a crash, or an admin's `celery control shutdown`: the rest of the stack goes on
            if due := stack.due_for_restart(now=time.monotonic(), log_dir=log_dir):
                stack.start(env, log_dir=log_dir, only=due)
            time.sleep(0.2)
        return EXIT_OK
    finally:
        info("stopping...")
        stack.stop()
        if redis is not None:
            redis.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        info("stopped")
