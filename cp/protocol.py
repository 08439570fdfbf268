"""Versioned message payloads exchanged between the control plane and daemons (docs/protocol.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from cp.settings import (
    MAX_COLUMNS,
    MAX_CURSOR_CHARS,
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_LOG_BATCH_CHARS,
    MAX_LOG_BATCH_RECORDS,
    MAX_LOG_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_OPTIONS,
    MAX_PIPELINES,
    MAX_PROGRESS_RUNS,
    MAX_QUERY_CHARS,
    MAX_RUN_KEYS,
    MAX_TEXT_CHARS,
)

CP_QUEUE = "mycelial.cp"
DAEMON_QUEUE_PREFIX = "mycelial.daemon."

# task names: cp.* run on control-plane workers, daemon.* on daemons
CP_DAEMON_HELLO = "cp.daemon_hello"
CP_HEARTBEAT = "cp.heartbeat"
CP_RUN_EVENT = "cp.run_event"
CP_CONFIG_APPLIED = "cp.config_applied"
CP_CONFIG_REQUEST = "cp.config_request"
CP_LOGS = "cp.logs"
CP_CHECK_DAEMON_HEALTH = "cp.check_daemon_health"
CP_PURGE_OLD_RECORDS = "cp.purge_old_records"
CP_SEND_PROBES = "cp.send_probes"
CP_EVALUATE_ALERTS = "cp.evaluate_alerts"
CP_DELIVER_NOTICES = "cp.deliver_notices"
CP_PROBE_REPLY = "cp.probe_reply"
DAEMON_PROBE = "daemon.probe"
DAEMON_APPLY_CONFIG = "daemon.apply_config"
DAEMON_RUN_JOB = "daemon.run_job"


CP_MESSAGE_REJECTED = "cp.message_rejected"
CP_ENROLL = "cp.enroll"
DAEMON_ENROLLED = "daemon.enrolled"
DAEMON_TRUST_KEYS = "daemon.trust_keys"

# daemon, connector and pipeline names, in config files and in messages alike
NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_CHARS - 1}}}$"
# task ids, run keys, probe ids: printable ASCII, no spaces
ID_PATTERN = rf"^[!-~]{{1,{MAX_ID_CHARS}}}$"

Name = Annotated[str, Field(min_length=1, pattern=NAME_PATTERN)]
Id = Annotated[str, Field(pattern=ID_PATTERN)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
ErrorText = Annotated[str, Field(max_length=MAX_ERROR_CHARS)]
Cursor = Annotated[str, Field(max_length=MAX_CURSOR_CHARS)]
Labels = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)],
        Annotated[str, Field(max_length=MAX_LABEL_VALUE_CHARS)],
    ],
    Field(max_length=MAX_LABELS),
]
RunKeys = Annotated[list[Id], Field(max_length=MAX_RUN_KEYS)]
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Version = Annotated[int, Field(ge=0, le=2**63 - 1)]


def clip(text: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """Text cut to ``limit`` characters (marked), so a sender never builds an over-limit message."""
    if text is None or len(text) <= limit:
        return text
    marker = " [...]"
    return text[: limit - len(marker)] + marker


def daemon_queue(name: str) -> str:
    return f"{DAEMON_QUEUE_PREFIX}{name}"


# A daemon's heartbeat is not a task: it overwrites one Redis key of its own (docs/protocol.md),
# so only the newest exists, a dead daemon leaves at most one, and the key's remaining time to
# live tells the control plane, by the broker's clock, how long ago it was written.
HEARTBEAT_KEY_PREFIX = "mycelial.heartbeat."
HEARTBEAT_KEY_TTL_SECONDS = 120
HEARTBEAT_TASK_ID = "heartbeat"  # what a heartbeat's envelope names as task id (no task exists)
# 1,000 running task ids of 200 characters, JSON-quoted, and the rest
HEARTBEAT_MAX_BYTES = 256 * 2**10


def heartbeat_key(name: str) -> str:
    return f"{HEARTBEAT_KEY_PREFIX}{name}"


class MessageError(ValueError):
    """A message that does not match its contract."""


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1


class DaemonHello(Message):
    name: Name
    labels: Labels = Field(default_factory=dict)
    software_version: Text
    hostname: Text = ""
    applied_config_version: Version | None = None
    # when this process started: runs the daemon began before then died with an earlier process
    started_at: AwareDatetime | None = None
    # jobs an earlier process took from the daemon's queue and never finished (workers/orphans.py)
    orphaned_task_ids: RunKeys = Field(default_factory=list)


class JobProgress(BaseModel):
    """How far one running job has got, as its daemon saw it when it sent the heartbeat."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_key: Id
    pipeline: Name
    attempt: int = Field(ge=1, le=1_000_000)
    rows_read: Count = 0
    rows_written: Count = 0
    # rows written per second since the previous heartbeat (since the start for the first one)
    rows_per_second: float = Field(default=0.0, ge=0, le=1e12, allow_inf_nan=False)
    running_s: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)


class Heartbeat(Message):
    name: Name
    sent_at: AwareDatetime
    running_runs: RunKeys = Field(default_factory=list)
    cpu_percent: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    memory_mb: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    progress: Annotated[list[JobProgress], Field(max_length=MAX_PROGRESS_RUNS)] = Field(default_factory=list)


RunEventState = Literal["started", "progress", "succeeded", "failed", "timed_out", "cancelled"]


class RunEvent(Message):
    run_key: Id
    daemon: Name
    state: RunEventState
    at: AwareDatetime
    rows_read: Count = 0
    rows_written: Count = 0
    cursor: Cursor | None = None
    error: ErrorText | None = None
    retryable: bool = False
    attempt: int | None = Field(default=None, ge=1, le=1_000_000)
    # increases with every event the daemon sends for this attempt, across redeliveries of its job:
    # the control plane ignores an event older than the newest it applied (docs/protocol.md)
    seq: int | None = Field(default=None, ge=1, le=2**63 - 1)


class ConfigApplied(Message):
    name: Name
    version: Version
    ok: bool
    error: ErrorText | None = None


class ConfigRequest(Message):
    """A daemon asks for its desired config again (an admin's `control mycelial_refresh_config`)."""

    name: Name
    applied_config_version: Version | None = None


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[LogLevel, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# what a daemon's log record may be numbered with: exact in a Lua number (the acknowledgement)
MAX_LOG_SEQ = 2**53


LOG_ROW_FIELDS = ("seq", "ts", "level", "logger", "pipeline", "run_key", "attempt", "message")
# one log record as the wire carries it: an array of exactly these fields in this order, not an
# object per record. A batch of 1,000 then costs a third less to send and several times less to
# decode, sign and verify (no repeated keys to parse and sort; docs/logs.md)
LogRow = tuple[
    Annotated[
        int, Field(ge=1, le=MAX_LOG_SEQ)
    ],  # per daemon, only grows, across restarts (workers/logs/spool.py)
    AwareDatetime,  # ts
    LogLevel,
    Text,  # logger
    Name | None,  # pipeline
    Id | None,  # run_key
    Annotated[int, Field(ge=1, le=1_000_000)] | None,  # attempt
    Annotated[str, Field(max_length=MAX_LOG_MESSAGE_CHARS)],  # message
]
# where each field sits in a row (LOG_ROW_FIELDS)
SEQ: Final = 0
TS: Final = 1
MESSAGE: Final = 7


def log_row(record: Mapping[str, Any]) -> list[Any]:
    """The wire row of a record held as an object (a daemon's spool); absent optional fields are null."""
    return [record.get(field) for field in LOG_ROW_FIELDS]


class LogBatch(Message):
    """A daemon's log records as rows of LOG_ROW_FIELDS, in seq order; ``dropped`` counts the
    records its full spool dropped since the previous batch (oldest first)."""

    name: Name
    rows: Annotated[list[LogRow], Field(min_length=1, max_length=MAX_LOG_BATCH_RECORDS)]
    dropped: Count = 0

    @model_validator(mode="after")
    def _bounded_and_ordered(self) -> LogBatch:
        total = sum(len(r[MESSAGE]) for r in self.rows)
        if total > MAX_LOG_BATCH_CHARS:
            raise ValueError(f"messages of one batch hold {total} characters, at most {MAX_LOG_BATCH_CHARS}")
        seqs = [r[SEQ] for r in self.rows]
        if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
            raise ValueError("records must be in increasing seq order")
        return self

    @property
    def first_seq(self) -> int:
        return self.rows[0][SEQ]

    @property
    def last_seq(self) -> int:
        return self.rows[-1][SEQ]


# the control plane acknowledges a stored batch by raising this key to the batch's last seq; the
# daemon keeps its records on disk until then (docs/logs.md)
LOG_ACK_KEY_PREFIX = "mycelial.logs.ack."


def log_ack_key(name: str) -> str:
    return f"{LOG_ACK_KEY_PREFIX}{name}"


class Probe(Message):
    probe_id: Id
    sent_at: AwareDatetime


class ProbeReply(Message):
    name: Name
    probe_id: Id
    sent_at: AwareDatetime


class MessageRejected(Message):
    """A daemon's report of messages it took off its queue unprocessed (cp/messaging/)."""

    name: Name
    queue: Text
    reason: ErrorText
    task: Text | None = None
    task_id: Text | None = None
    at: AwareDatetime
    # rejections not reported one by one since the last report (the daemon rate-limits them)
    suppressed: Count = 0
    # malformed, or well-formed but not authenticated (docs/security.md)
    kind: Literal["message_rejected", "security"] = "message_rejected"


PublicKeyText = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]  # 32 bytes, base64url
KeyId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class DaemonEnroll(Message):
    """A daemon's first message: its new public key, and proof that it holds the token."""

    name: Name
    token_id: Annotated[str, Field(pattern=r"^[0-9a-f]{24}$")]
    public_key: PublicKeyText
    proof: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]  # HMAC-SHA256, base64url
    software_version: Text = ""


class DaemonEnrolled(Message):
    """The control plane registered the daemon's key: the daemon says hello again."""

    name: Name
    key_id: KeyId


class TrustKeys(Message):
    """The control-plane keys a daemon accepts from now on (key rotation, docs/security.md)."""

    keys: Annotated[list[PublicKeyText], Field(min_length=1, max_length=4)]
    # when the control plane made this list (ms since the epoch): a daemon keeps the newest only,
    # so an old list replayed cannot bring back a retired key
    generation: Annotated[int, Field(ge=1, le=2**53)]


class ConnectorSpec(BaseModel):
    """A connector as a daemon sees it: options may hold secret references, never secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Name
    kind: Text
    options: Annotated[dict[Text, Any], Field(max_length=MAX_OPTIONS)] = Field(default_factory=dict)


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Name
    source: ConnectorSpec
    source_table: Text | None = None
    source_query: Annotated[str, Field(max_length=MAX_QUERY_CHARS)] | None = None
    destination: ConnectorSpec
    destination_table: Text
    mode: Literal["replace", "append", "incremental", "upsert"] = "replace"
    batch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    cursor_column: Text | None = None
    key_columns: Annotated[list[Text], Field(max_length=MAX_COLUMNS)] = Field(default_factory=list)
    schema_drift: Literal["add", "fail"] = "add"


class ApplyConfig(Message):
    version: Version
    checksum: Text
    state: DesiredState


class DesiredState(BaseModel):
    """A daemon's full desired state: everything it should know, not a diff."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    daemon: Name
    labels: Labels = Field(default_factory=dict)
    pipelines: Annotated[list[PipelineSpec], Field(max_length=MAX_PIPELINES)] = Field(default_factory=list)


class RunJob(Message):
    run_key: Id
    attempt: int = Field(ge=1, le=1_000_000)
    pipeline: PipelineSpec
    cursor: Cursor | None = None
    # the pipeline's timeout: the daemon stops the attempt this many seconds after it starts it
    timeout_seconds: float | None = Field(default=None, gt=0, le=7 * 86_400)


ApplyConfig.model_rebuild()

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], payload: object) -> M:
    """Validate a received payload, raising one readable MessageError on any problem."""
    if not isinstance(payload, dict):
        raise MessageError(f"{model.__name__}: payload must be an object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        # a location can hold a dict key from the message itself: keep every part short
        problems = "; ".join(
            f"{'.'.join(clip(str(p), 40) or '' for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()[:10]
        )
        more = f" (and {exc.error_count() - 10} more)" if exc.error_count() > 10 else ""
        raise MessageError(clip(f"{model.__name__}: {problems}{more}", 2_000)) from None


def dump(message: BaseModel) -> dict[str, Any]:
    return message.model_dump(mode="json")
