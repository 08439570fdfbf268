"""Versioned message payloads exchanged between the control plane and daemons (docs/protocol.md)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

CP_QUEUE = "mycelial.cp"
DAEMON_QUEUE_PREFIX = "mycelial.daemon."

# task names: cp.* run on control-plane workers, daemon.* on daemons
CP_DAEMON_HELLO = "cp.daemon_hello"
CP_HEARTBEAT = "cp.heartbeat"
CP_RUN_EVENT = "cp.run_event"
CP_CONFIG_APPLIED = "cp.config_applied"
CP_LOGS = "cp.logs"
CP_CHECK_DAEMON_HEALTH = "cp.check_daemon_health"
CP_PURGE_OLD_RECORDS = "cp.purge_old_records"
CP_SEND_PROBES = "cp.send_probes"
CP_PROBE_REPLY = "cp.probe_reply"
DAEMON_PROBE = "daemon.probe"
DAEMON_APPLY_CONFIG = "daemon.apply_config"
DAEMON_RUN_JOB = "daemon.run_job"


def daemon_queue(name: str) -> str:
    return f"{DAEMON_QUEUE_PREFIX}{name}"


class MessageError(ValueError):
    """A message that does not match its contract."""


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1


class DaemonHello(Message):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    software_version: str
    hostname: str = ""
    applied_config_version: int | None = None
    # when this process started: runs the daemon began before then died with an earlier process
    started_at: AwareDatetime | None = None
    # jobs an earlier process took from the daemon's queue and never finished (workers/orphans.py)
    orphaned_task_ids: list[str] = Field(default_factory=list)


class Heartbeat(Message):
    name: str = Field(min_length=1)
    sent_at: AwareDatetime
    running_runs: list[str] = Field(default_factory=list)
    cpu_percent: float | None = None
    memory_mb: float | None = None


RunEventState = Literal["started", "progress", "succeeded", "failed", "timed_out", "cancelled"]


class RunEvent(Message):
    run_key: str = Field(min_length=1)
    daemon: str = Field(min_length=1)
    state: RunEventState
    at: AwareDatetime
    rows_read: int = Field(default=0, ge=0)
    rows_written: int = Field(default=0, ge=0)
    cursor: str | None = None
    error: str | None = None
    retryable: bool = False
    attempt: int | None = Field(default=None, ge=1)
    # increases with every event the daemon sends for this attempt, across redeliveries of its job:
    # the control plane ignores an event older than the newest it applied (docs/protocol.md)
    seq: int | None = Field(default=None, ge=1, le=2**63 - 1)


class ConfigApplied(Message):
    name: str = Field(min_length=1)
    version: int
    ok: bool
    error: str | None = None


class LogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seq: str
    ts: AwareDatetime
    level: str
    logger: str
    run_key: str | None = None
    message: str


class LogBatch(Message):
    name: str = Field(min_length=1)
    records: list[LogEntry]


class Probe(Message):
    probe_id: str = Field(min_length=1)
    sent_at: AwareDatetime


class ProbeReply(Message):
    name: str = Field(min_length=1)
    probe_id: str = Field(min_length=1)
    sent_at: AwareDatetime


class ConnectorSpec(BaseModel):
    """A connector as a daemon sees it: options may hold secret references, never secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: str
    options: dict[str, Any] = Field(default_factory=dict)


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    source: ConnectorSpec
    source_table: str | None = None
    source_query: str | None = None
    destination: ConnectorSpec
    destination_table: str
    mode: Literal["replace", "append", "incremental", "upsert"] = "replace"
    batch_size: int = 10_000
    cursor_column: str | None = None
    key_columns: list[str] = Field(default_factory=list)
    schema_drift: Literal["add", "fail"] = "add"


class ApplyConfig(Message):
    version: int
    checksum: str
    state: DesiredState


class DesiredState(BaseModel):
    """A daemon's full desired state: everything it should know, not a diff."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    daemon: str
    labels: dict[str, str] = Field(default_factory=dict)
    pipelines: list[PipelineSpec] = Field(default_factory=list)


class RunJob(Message):
    run_key: str = Field(min_length=1)
    attempt: int = Field(ge=1)
    pipeline: PipelineSpec
    cursor: str | None = None
    # the pipeline's timeout: the daemon stops the attempt this many seconds after it starts it
    timeout_seconds: float | None = Field(default=None, gt=0)


ApplyConfig.model_rebuild()

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], payload: object) -> M:
    """Validate a received payload, raising one readable MessageError on any problem."""
    if not isinstance(payload, dict):
        raise MessageError(f"{model.__name__}: payload must be an object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise MessageError(f"{model.__name__}: {problems}") from None


def dump(message: BaseModel) -> dict[str, Any]:
    return message.model_dump(mode="json")
