"""Daemon Celery tasks: validate, call the engine, report back. No business logic here."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps
from celery.signals import after_setup_logger, after_setup_task_logger
from celery.worker import state as worker_state

from cp.messaging.envelope_check import Rejection
from cp.messaging.install import guard_of
from cp.models import utcnow
from cp.protocol import (
    CP_CONFIG_APPLIED,
    CP_PROBE_REPLY,
    CP_RUN_EVENT,
    DAEMON_APPLY_CONFIG,
    DAEMON_ENROLLED,
    DAEMON_PROBE,
    DAEMON_RUN_JOB,
    DAEMON_TRUST_KEYS,
    ApplyConfig,
    ConfigApplied,
    DaemonEnrolled,
    MessageError,
    Probe,
    ProbeReply,
    RunEvent,
    RunJob,
    TrustKeys,
    clip,
    daemon_queue,
    parse,
)
from workers.admin_commands import attach as attach_admin_commands
from workers.identity import DaemonKeyStore
from workers.jobs import Outcome, Report, execute
from workers.logs.capture import job_logging
from workers.rejections import report_to_control_plane
from workers.runtime import DaemonRuntime
from workers.secrets import install_log_scrubbing
from workers.task_outcome import DuplicateDelivery, RunFailed, end_task, refused

log = logging.getLogger(__name__)


def register_daemon_tasks(app: Celery, daemon: DaemonRuntime, keys: DaemonKeyStore | None = None) -> None:
    # every handler Celery sets up in this process scrubs secrets from what it writes
    install_log_scrubbing()
    after_setup_logger.connect(install_log_scrubbing, weak=False)
    after_setup_task_logger.connect(install_log_scrubbing, weak=False)
    guard = guard_of(app)
    guard.record_with(report_to_control_plane(daemon))
    attach_admin_commands(app, daemon)  # `celery inspect mycelial_*`: daemons only

    def rejected(task: str, exc: MessageError, task_id: str | None) -> None:
        log.error("rejected %s message: %s", task, exc)
        guard.record(Rejection(queue=daemon_queue(daemon.name), reason=str(exc), task=task, task_id=task_id))

    @app.task(name=DAEMON_APPLY_CONFIG, shared=False, ignore_result=True)
    def apply_config(*args: Any, **kwargs: Any) -> None:
        try:
            config = parse(ApplyConfig, _single_payload(args, kwargs))
        except MessageError as exc:
            rejected(DAEMON_APPLY_CONFIG, exc, apply_config.request.id)
            return
        version, error = _store_config(daemon, config)
        daemon.send(
            CP_CONFIG_APPLIED,
            # the version reported only moves forward: an older push reports the newer one kept
            ConfigApplied(name=daemon.name, version=version, ok=error is None, error=clip(error)),
            argsrepr=f"daemon={daemon.name} version={version}",
        )

    @app.task(name=DAEMON_ENROLLED, shared=False, ignore_result=True)
    def enrolled(*args: Any, **kwargs: Any) -> None:
        try:
            notice = parse(DaemonEnrolled, _single_payload(args, kwargs))
        except MessageError as exc:
            rejected(DAEMON_ENROLLED, exc, enrolled.request.id)
            return
        log.info("enrolled with the control plane (key %s): saying hello", notice.key_id)
        daemon.on_enrolled()

    @app.task(name=DAEMON_TRUST_KEYS, shared=False, ignore_result=True, send_events=False)
    def trust_keys(*args: Any, **kwargs: Any) -> None:
        try:
            trust = parse(TrustKeys, _single_payload(args, kwargs))
        except MessageError as exc:
            rejected(DAEMON_TRUST_KEYS, exc, trust_keys.request.id)
            return
        if keys is None:
            log.warning("no key store: ignoring the control plane's key list")
            return
        if keys.trust(trust.keys, generation=trust.generation):
            log.info("trusting %s control-plane key(s) from now on", len(trust.keys))
        else:
            log.info("ignored a control-plane key list older than the one kept")

    @app.task(name=DAEMON_PROBE, shared=False, ignore_result=True, send_events=False)
    def probe(*args: Any, **kwargs: Any) -> None:
        try:
            canary = parse(Probe, _single_payload(args, kwargs))
        except MessageError as exc:
            rejected(DAEMON_PROBE, exc, probe.request.id)
            return
        daemon.send(
            CP_PROBE_REPLY,
            ProbeReply(name=daemon.name, probe_id=canary.probe_id, sent_at=canary.sent_at),
            argsrepr=f"daemon={daemon.name} probe={canary.probe_id}",
        )

    # a failed run raises after its outcome is recorded (workers/task_outcome.py): the message is
    # acknowledged then, never redelivered, and logged as expected (one line, no traceback)
    @app.task(
        name=DAEMON_RUN_JOB,
        shared=False,
        ignore_result=True,
        acks_on_failure=True,
        throws=(RunFailed,),
    )
    def run_job(*args: Any, **kwargs: Any) -> None:
        try:
            job = parse(RunJob, _single_payload(args, kwargs))
        except MessageError as exc:
            rejected(DAEMON_RUN_JOB, exc, run_job.request.id)
            raise refused(str(exc)) from None
        task_id = run_job.request.id or job.run_key
        if not daemon.claim(task_id):
            log.warning("run %s is already running or done here; duplicate delivery ignored", task_id)
            raise DuplicateDelivery()
        try:
            deliveries = daemon.deliveries.record(task_id)
            with job_logging(pipeline=job.pipeline.name, run_key=job.run_key, attempt=job.attempt):
                if deliveries > daemon.settings.max_deliveries:
                    outcome = _give_up(daemon, job, deliveries)
                else:
                    outcome = _run(daemon, job, task_id=task_id, delivery=deliveries)
            daemon.deliveries.forget(task_id)
        finally:
            daemon.release(task_id)

        def announce_revoked(exception: str) -> None:
            run_job.send_event(
                "task-revoked", terminated=False, signum=None, expired=False, exception=exception
            )

        # the outcome's run event goes out before Flower hears how the task ended (a broker away:
        # it waits in the outbox, and the task ends anyway)
        daemon.outbox.flush(timeout=OUTCOME_SEND_WAIT)
        end_task(outcome, announce_revoked=announce_revoked)


MAX_REFUSALS_SHOWN = 5
OUTCOME_SEND_WAIT = 5.0  # seconds a job's task waits for its outcome to reach the broker


def _store_config(daemon: DaemonRuntime, config: ApplyConfig) -> tuple[int, str | None]:
    """Apply ``config`` unless a newer one is applied; the version applied now, and any error."""
    refused = daemon.confinement.config_problems(config.state)
    if config.state.daemon != daemon.name:
        error = f"config for daemon {config.state.daemon!r} arrived at {daemon.name!r}"
    elif refused:
        shown = "; ".join(refused[:MAX_REFUSALS_SHOWN])
        more = f" (and {len(refused) - MAX_REFUSALS_SHOWN} more)" if len(refused) > MAX_REFUSALS_SHOWN else ""
        error = f"refused by the daemon's confinement: {shown}{more}"
    else:
        try:
            applied = daemon.state.apply(config)
        except OSError as exc:
            error = f"cannot store config locally: {exc.strerror}"
        else:
            if applied.ignored:
                log.info("config version %s ignored: version %s is newer", config.version, applied.version)
            else:
                log.info(
                    "applied config version %s (%d pipelines)", config.version, len(config.state.pipelines)
                )
            return applied.version, None
    log.error("config version %s not applied: %s", config.version, error)
    return config.version, error


def _give_up(daemon: DaemonRuntime, job: RunJob, deliveries: int) -> Outcome:
    error = (
        f"pipeline {job.pipeline.name}: delivered {deliveries} times without finishing "
        f"(the job may be killing the daemon); not running it again"
    )
    log.error("run %s: %s", job.run_key, error)
    outcome = Outcome("failed", error=error)
    _sender(daemon, job, delivery=deliveries)(outcome)
    return outcome


SEQS_PER_DELIVERY = 2**32


def _sender(daemon: DaemonRuntime, job: RunJob, *, delivery: int) -> Callable[[Outcome], None]:
    """Sends the run events of one delivery of ``job``, numbered for the control plane's ordering.

    Numbers start past those of every earlier delivery (counted on disk, so across restarts): a
    redelivered job's events supersede whatever a dead process sent for the same attempt.
    """
    seqs = itertools.count(delivery * SEQS_PER_DELIVERY + 1)

    def send(outcome: Outcome) -> None:
        event = RunEvent(
            run_key=job.run_key,
            daemon=daemon.name,
            state=outcome.state,
            at=utcnow(),
            rows_read=outcome.rows_read,
            rows_written=outcome.rows_written,
            error=clip(outcome.error),
            retryable=outcome.retryable,
            attempt=job.attempt,
            seq=next(seqs),
        )
        daemon.send(
            CP_RUN_EVENT,
            event,
            argsrepr=f"pipeline={job.pipeline.name} run={job.run_key} state={outcome.state}",
        )

    return send


def _run(daemon: DaemonRuntime, job: RunJob, *, task_id: str, delivery: int) -> Outcome:
    send = _sender(daemon, job, delivery=delivery)
    log.info("run %s of pipeline %s started", job.run_key, job.pipeline.name)
    daemon.progress.started(
        task_id=task_id, run_key=job.run_key, pipeline=job.pipeline.name, attempt=job.attempt, now=utcnow()
    )
    try:
        # `mycelial cancel` revokes the task id; Celery's revoke reaches a busy worker by broadcast
        outcome = execute(
            job,
            home=daemon.home,
            confinement=daemon.confinement,
            report=Report(send, on_rows=daemon.progress.rows_of(task_id)),
            should_stop=lambda: task_id in worker_state.revoked,
        )
    finally:
        daemon.progress.ended(task_id)
    if outcome.state == "succeeded":
        log.info("run %s succeeded: %d rows", job.run_key, outcome.rows_written)
    else:
        log.error("run %s %s: %s", job.run_key, outcome.state, outcome.error)
    return outcome


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
