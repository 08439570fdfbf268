"""A worker that stops on an unrecoverable error starts again in place; any other exit goes through."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cp.cli import restart
from cp.cli.restart import RESTARTS_VAR, UNRECOVERABLE, run_restarting

ROOT = Path(__file__).resolve().parents[2]


class Exec:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.slept: list[float] = []

    def execv(self, path: str, argv: list[str]) -> None:
        self.calls.append((path, argv))

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def run(
    code: int | None,
    *,
    asked_to_stop: bool = False,
    ran_for: float = 1.0,
    finish: Callable[[bool], None] | None = None,
) -> Exec:
    fake = Exec()
    times = iter([0.0, ran_for])
    run_restarting(
        lambda: code,
        asked_to_stop=lambda: asked_to_stop,
        what="daemon edge-1",
        finish=finish,
        argv=["/venv/bin/mycelial", "daemon", "--name", "edge-1"],
        execv=fake.execv,
        sleep=fake.sleep,
        clock=lambda: next(times),
    )
    return fake


def test_an_unrecoverable_error_execs_the_same_command_after_a_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RESTARTS_VAR, raising=False)
    fake = run(UNRECOVERABLE)
    assert fake.calls == [(sys.executable, [sys.executable, "daemon", "--name", "edge-1"])]
    assert fake.slept == [1.0]
    assert restart.os.environ[RESTARTS_VAR] == "1"


def test_restarts_in_a_row_wait_longer_and_a_long_run_starts_the_count_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RESTARTS_VAR, "3")
    assert run(UNRECOVERABLE).slept == [8.0]
    monkeypatch.setenv(RESTARTS_VAR, "9")
    assert run(UNRECOVERABLE).slept == [30.0]
    monkeypatch.setenv(RESTARTS_VAR, "9")
    assert run(UNRECOVERABLE, ran_for=600).slept == [1.0]


@pytest.mark.parametrize(
    ("code", "asked_to_stop", "exit_code"),
    [
        (0, False, 0),  # a warm shutdown
        (None, False, 0),
        (UNRECOVERABLE, True, UNRECOVERABLE),  # a cold shutdown by SIGINT or SIGQUIT
        (2, False, 2),  # a bad command line
    ],
)
def test_other_exits_go_through_with_their_code(
    code: int | None, asked_to_stop: bool, exit_code: int
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(code, asked_to_stop=asked_to_stop)
    assert exited.value.code == exit_code


def test_a_restart_first_lets_the_process_finish_its_running_jobs_and_then_execs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RESTARTS_VAR, raising=False)
    order: list[str] = []
    fake = Exec()
    run_restarting(
        lambda: UNRECOVERABLE,
        asked_to_stop=lambda: False,
        what="daemon edge-1",
        finish=lambda restarting: order.append(f"finish restarting={restarting}"),
        argv=["/venv/bin/mycelial", "daemon"],
        execv=lambda path, argv: order.append("exec"),
        sleep=fake.sleep,
    )
    assert order == ["finish restarting=True", "exec"]


@pytest.mark.parametrize(("code", "asked_to_stop"), [(0, False), (UNRECOVERABLE, True), (2, False)])
def test_an_exit_finishes_without_waiting_for_a_restart(code: int, asked_to_stop: bool) -> None:
    finished: list[bool] = []
    with pytest.raises(SystemExit):
        run(code, asked_to_stop=asked_to_stop, finish=finished.append)
    assert finished == [False]


WORKER = r"""
import os
import sys
from celery import Celery, bootsteps
from cp.cli.restart import RESTARTS_VAR, start_worker

class Once(bootsteps.StartStopStep):
    def start(self, worker):
        # the worker sends print() to its log: write to the real stdout
        sys.__stdout__.write(f"started {os.getpid()} {os.environ.get(RESTARTS_VAR)}\n")
        sys.__stdout__.flush()
        if os.environ.get(RESTARTS_VAR) is None:
            raise RuntimeError("an error Celery cannot recover from")
        raise SystemExit(0)  # the second time, stop cleanly

app = Celery("restart-test", broker="memory://")
app.steps["worker"].add(Once)
start_worker(app, ["worker", "--pool=solo", "--without-gossip", "--without-mingle"], what="test worker")
"""


def test_a_real_worker_that_fails_unrecoverably_runs_again_in_the_same_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != RESTARTS_VAR}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    started = [line.split() for line in done.stdout.splitlines() if line.startswith("started")]
    assert done.returncode == 0, done.stderr[-2000:]
    assert [s[2] for s in started] == ["None", "1"]
    assert started[0][1] == started[1][1]  # the same process, exec'd again
    assert "Unrecoverable error" in done.stderr
