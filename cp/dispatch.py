"""The broker-facing edge: build messages for daemons and publish them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from celery import Celery

from cp.config_store import ConfigPush
from cp.protocol import (
    DAEMON_APPLY_CONFIG,
    DAEMON_ENROLLED,
    DAEMON_PROBE,
    DAEMON_RUN_JOB,
    DAEMON_TRUST_KEYS,
    ApplyConfig,
    DaemonEnrolled,
    PipelineSpec,
    Probe,
    RunJob,
    TrustKeys,
    daemon_queue,
    dump,
)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish; ``argsrepr`` is what Flower shows instead of the payload."""

    task: str
    queue: str
    payload: dict[str, Any]
    argsrepr: str
    task_id: str | None = None
    expires: float | None = None


class Dispatcher(Protocol):
    def send(self, message: Outgoing) -> None: ...


class CeleryDispatcher:
    """Publishes through a Celery app's producer pool."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def send(self, message: Outgoing) -> None:
        self._app.send_task(
            message.task,
            args=[message.payload],
            queue=message.queue,
            task_id=message.task_id,
            expires=message.expires,
            argsrepr=message.argsrepr,
            kwargsrepr="{}",
        )


@dataclass
class MemoryDispatcher:
    """Keeps messages in a list: the in-memory twin for unit tests."""

    sent: list[Outgoing] = field(default_factory=list)

    def send(self, message: Outgoing) -> None:
        self.sent.append(message)


def apply_config_message(push: ConfigPush, *, expires: float) -> Outgoing:
    payload = ApplyConfig(version=push.version, checksum=push.checksum, state=push.state)
    names = ",".join(p.name for p in push.state.pipelines) or "-"
    return Outgoing(
        task=DAEMON_APPLY_CONFIG,
        queue=daemon_queue(push.daemon),
        payload=dump(payload),
        argsrepr=f"daemon={push.daemon} version={push.version} pipelines={names}",
        expires=expires,
    )


def run_job_message(
    *,
    daemon: str,
    run_key: str,
    task_id: str,
    attempt: int,
    pipeline: PipelineSpec,
    cursor: str | None,
    expires: float,
    max_attempts: int,
    timeout_seconds: float | None = None,
) -> Outgoing:
    payload = RunJob(
        run_key=run_key, attempt=attempt, pipeline=pipeline, cursor=cursor, timeout_seconds=timeout_seconds
    )
    return job_outgoing(
        daemon=daemon,
        task_id=task_id,
        payload=dump(payload),
        pipeline_name=pipeline.name,
        max_attempts=max_attempts,
        expires=expires,
    )


def job_payload(
    *,
    run_key: str,
    attempt: int,
    pipeline: dict[str, Any],
    cursor: str | None = None,
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """A RunJob payload from an already dumped PipelineSpec: schedulers dump each spec once per tick."""
    return {
        "v": 1,
        "run_key": run_key,
        "attempt": attempt,
        "pipeline": pipeline,
        "cursor": cursor,
        "timeout_seconds": timeout_seconds,
    }


def job_outgoing(
    *,
    daemon: str,
    task_id: str,
    payload: dict[str, Any],
    pipeline_name: str,
    max_attempts: int,
    expires: float,
) -> Outgoing:
    argsrepr = job_argsrepr(
        pipeline=pipeline_name,
        run_key=payload["run_key"],
        attempt=payload["attempt"],
        max_attempts=max_attempts,
        daemon=daemon,
    )
    return Outgoing(
        task=DAEMON_RUN_JOB,
        queue=daemon_queue(daemon),
        payload=payload,
        argsrepr=argsrepr,
        task_id=task_id,
        expires=expires,
    )


def job_argsrepr(*, pipeline: str, run_key: str, attempt: int, max_attempts: int, daemon: str) -> str:
    """What Flower shows of a job instead of its payload, whose connector options may hold secrets.

    Each attempt of a run is a task of its own (cp/runs.py ``task_id_for``): ``attempt 2/3`` tells
    they belong together. It comes first and the run key (also the task id) last, so Flower's
    narrow column shows the attempt. An attempt moved off a lost daemon before it started is
    numbered but not counted as a try, so after a move the number can pass the maximum.
    """
    return f"attempt {attempt}/{max_attempts} pipeline={pipeline} daemon={daemon} run={run_key}"


def probe_message(daemon: str, *, probe_id: str, sent_at: datetime, expires: float) -> Outgoing:
    return Outgoing(
        task=DAEMON_PROBE,
        queue=daemon_queue(daemon),
        payload=dump(Probe(probe_id=probe_id, sent_at=sent_at)),
        argsrepr=f"daemon={daemon} probe={probe_id}",
        expires=expires,
    )


def enrolled_message(daemon: str, *, key_id: str, expires: float) -> Outgoing:
    return Outgoing(
        task=DAEMON_ENROLLED,
        queue=daemon_queue(daemon),
        payload=dump(DaemonEnrolled(name=daemon, key_id=key_id)),
        argsrepr=f"daemon={daemon} key={key_id}",
        expires=expires,
    )


def trust_keys_message(daemon: str, *, keys: list[str], generation: int, expires: float) -> Outgoing:
    return Outgoing(
        task=DAEMON_TRUST_KEYS,
        queue=daemon_queue(daemon),
        payload=dump(TrustKeys(keys=keys, generation=generation)),
        argsrepr=f"daemon={daemon} keys={len(keys)}",
        expires=expires,
    )
