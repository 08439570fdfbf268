"""Daemon Celery tasks: validate, call the engine, report back. No business logic here."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, bootsteps

from cp.models import utcnow
from cp.protocol import (
    CP_CONFIG_APPLIED,
    CP_RUN_EVENT,
    DAEMON_APPLY_CONFIG,
    DAEMON_RUN_JOB,
    ApplyConfig,
    ConfigApplied,
    MessageError,
    RunEvent,
    RunEventState,
    RunJob,
    parse,
)
from workers.runtime import DaemonRuntime
from workers.secrets import SecretError
from workers.sqlite_copy import JobError, copy_pipeline

log = logging.getLogger(__name__)
PROGRESS_EVERY = 1.0  # seconds between progress events, at most


def register_daemon_tasks(app: Celery, daemon: DaemonRuntime) -> None:
    @app.task(name=DAEMON_APPLY_CONFIG, ignore_result=True)
    def apply_config(*args: Any, **kwargs: Any) -> None:
        try:
            config = parse(ApplyConfig, _single_payload(args, kwargs))
        except MessageError as exc:
            log.error("rejected %s message: %s", DAEMON_APPLY_CONFIG, exc)
            return
        error = _store_config(daemon, config)
        if error:
            log.error("config version %s not applied: %s", config.version, error)
        else:
            log.info(
                "applied config version %s (%d pipelines)",
                config.version,
                len(config.state.pipelines),
            )
        daemon.send(
            CP_CONFIG_APPLIED,
            ConfigApplied(name=daemon.name, version=config.version, ok=error is None, error=error),
            argsrepr=f"daemon={daemon.name} version={config.version}",
        )

    @app.task(name=DAEMON_RUN_JOB, ignore_result=True)
    def run_job(*args: Any, **kwargs: Any) -> None:
        try:
            job = parse(RunJob, _single_payload(args, kwargs))
        except MessageError as exc:
            log.error("rejected %s message: %s", DAEMON_RUN_JOB, exc)
            return
        if not daemon.claim(job.run_key):
            log.warning("run %s is already running or done here; duplicate delivery ignored", job.run_key)
            return
        try:
            _run(daemon, job)
        finally:
            daemon.release(job.run_key)


def _store_config(daemon: DaemonRuntime, config: ApplyConfig) -> str | None:
    if config.state.daemon != daemon.name:
        return f"config for daemon {config.state.daemon!r} arrived at {daemon.name!r}"
    try:
        daemon.state.save(config)
    except OSError as exc:
        return f"cannot store config locally: {exc.strerror}"
    return None


def _run(daemon: DaemonRuntime, job: RunJob) -> None:
    def report(state: RunEventState, *, read: int = 0, written: int = 0, error: str | None = None) -> None:
        event = RunEvent(
            run_key=job.run_key,
            daemon=daemon.name,
            state=state,
            at=utcnow(),
            rows_read=read,
            rows_written=written,
            error=error,
        )
        daemon.send(
            CP_RUN_EVENT,
            event,
            argsrepr=f"pipeline={job.pipeline.name} run={job.run_key} state={state}",
        )

    last_progress = time.monotonic()

    def on_progress(read: int, written: int) -> None:
        nonlocal last_progress
        if time.monotonic() - last_progress >= PROGRESS_EVERY:
            last_progress = time.monotonic()
            report("progress", read=read, written=written)

    log.info("run %s of pipeline %s started", job.run_key, job.pipeline.name)
    report("started")
    try:
        result = copy_pipeline(
            job.pipeline, home=daemon.home, on_progress=on_progress, should_stop=lambda: False
        )
    except (JobError, SecretError) as exc:
        error = f"pipeline {job.pipeline.name}: {exc}"
        log.error("run %s failed: %s", job.run_key, error)
        report("failed", error=error)
        return
    except Exception as exc:
        error = f"pipeline {job.pipeline.name}: unexpected {type(exc).__name__}"
        log.exception("run %s failed unexpectedly", job.run_key)
        report("failed", error=error)
        return
    log.info("run %s succeeded: %d rows", job.run_key, result.rows_written)
    report("succeeded", read=result.rows_read, written=result.rows_written)


def _single_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    return args[0] if len(args) == 1 and not kwargs else {"args": list(args), "kwargs": kwargs}


def lifecycle_step(daemon: DaemonRuntime) -> type[bootsteps.StartStopStep]:
    """A worker bootstep: say hello and heartbeat while the worker runs."""

    class DaemonLifecycle(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)

        def start(self, worker: Any) -> None:
            daemon.start()

        def stop(self, worker: Any) -> None:
            daemon.stop()

    return DaemonLifecycle
