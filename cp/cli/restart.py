"""Start a Celery worker again, in the same process, after it stopped on an unrecoverable error.

Celery stops a worker with exit code 1 ("Unrecoverable error") when an exception escapes its
consumer, and kombu's Redis transport has known races on reconnection that do just that after a
broker outage (celery/celery#4652, #9250; kombu#582). A process manager would start it again;
`mycelial worker` and `mycelial daemon` do it themselves, so a machine without one keeps working.
The process replaces itself (``exec``): same PID, a fresh interpreter, nothing left over from the
broken connection. A shutdown (exit 0) or a bad command line (other codes) is not restarted, and
the delay doubles with each restart in a row (1 s up to 30 s) so a worker that cannot run does not
spin. Celery gives exit code 1 for a cold shutdown by signal too; those are told apart by its
``worker_shutting_down`` signal, which only a signal-initiated shutdown sends.

A restart never costs a running job: its data does not travel through the broker, so before the
process replaces itself ``finish(restarting=True)`` lets the jobs end (a daemon waits for them and
sends or spools their last events); on any other exit ``finish(restarting=False)`` runs too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_shutting_down

log = logging.getLogger(__name__)

UNRECOVERABLE = 1  # celery.platforms.EX_FAILURE
RESTARTS_VAR = "MYCELIAL_WORKER_RESTARTS"  # restarts in a row, carried across exec
MAX_DELAY = 30.0
STEADY_AFTER = 60.0  # a worker that ran this long before failing starts the count afresh


def restart_delay(restarts: int) -> float:
    return min(MAX_DELAY, 2.0**restarts)


def start_worker(
    app: Celery, argv: list[str], *, what: str, finish: Callable[[bool], None] | None = None
) -> None:
    """``celery worker`` with ``argv``, started again in place if it stops on an unrecoverable error;
    exits with the worker's exit code otherwise. ``finish(restarting)`` runs once the worker stopped."""
    workers: list[Any] = []  # the WorkController, whose exitcode ``app.start`` does not pass on
    asked_to_stop = threading.Event()  # a signal (SIGTERM, SIGINT, SIGQUIT) began the shutdown

    def on_init(sender: Any, **_: object) -> None:
        workers.append(sender)

    def on_shutting_down(**_: object) -> None:
        asked_to_stop.set()

    worker_init.connect(on_init, weak=False)
    worker_shutting_down.connect(on_shutting_down, weak=False)

    def run() -> int | None:
        app.start(argv)
        return workers[-1].exitcode if workers else None

    run_restarting(run, asked_to_stop=asked_to_stop.is_set, what=what, finish=finish)


def run_restarting(
    run: Callable[[], int | None],
    *,
    asked_to_stop: Callable[[], bool],
    what: str,
    finish: Callable[[bool], None] | None = None,
    argv: Sequence[str] | None = None,
    execv: Callable[[str, list[str]], object] = os.execv,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``run`` (it returns the worker's exit code); exec this command again if the worker
    failed unrecoverably without being asked to stop, else exit with its code."""
    started = clock()
    code = run() or 0
    restarting = code == UNRECOVERABLE and not asked_to_stop()
    if finish is not None:
        finish(restarting)
    if not restarting:
        raise SystemExit(code)
    restarts = 0 if clock() - started >= STEADY_AFTER else int(os.environ.get(RESTARTS_VAR, "0"))
    delay = restart_delay(restarts)
    log.error("%s stopped on an unrecoverable error; starting it again in %.0fs", what, delay)
    sleep(delay)
    os.environ[RESTARTS_VAR] = str(restarts + 1)
    command = list(argv if argv is not None else sys.orig_argv)
    sys.stdout.flush()
    sys.stderr.flush()
    execv(sys.executable, [sys.executable, *command[1:]])
