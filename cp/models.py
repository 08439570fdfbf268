"""SQLModel tables: the control plane's system of record."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Text, TypeDecorator, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns timezone-aware UTC datetimes on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable))


def _enum(enum_cls: type[enum.StrEnum], default: Any, *, index: bool = False) -> Any:
    """Stored as its string value in a plain VARCHAR: no native ENUM types to migrate."""
    column_type = SAEnum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )
    return Field(default=default, sa_type=column_type, index=index)


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class DaemonStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"


class RunState(enum.StrEnum):
    SKIPPED = "skipped"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        return self in FINISHED_RUN_STATES


FINISHED_RUN_STATES = frozenset(
    {
        RunState.SKIPPED,
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.TIMED_OUT,
        RunState.CANCELLED,
        RunState.LOST,
    }
)
ACTIVE_RUN_STATES = frozenset({RunState.QUEUED, RunState.RUNNING})


class RunTrigger(enum.StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"


class Daemon(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    labels: dict[str, str] = _json()
    declared: bool = False
    status: DaemonStatus = _enum(DaemonStatus, DaemonStatus.UNKNOWN)
    status_since: datetime | None = _ts()
    status_reason: str | None = None
    software_version: str | None = None
    hostname: str | None = None
    last_heartbeat_at: datetime | None = _ts()
    last_probe_id: str | None = None
    last_probe_sent_at: datetime | None = _ts()
    last_probe_reply_at: datetime | None = _ts()
    last_probe_rtt_ms: float | None = None
    queue_depth: int | None = None
    running_runs: int = 0
    cpu_percent: float | None = None
    memory_mb: float | None = None
    # the newest heartbeat's JobProgress entries (cp/protocol.py), at most MAX_PROGRESS_RUNS
    running_progress: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    desired_config_version: int | None = None
    desired_checksum: str | None = None
    applied_config_version: int | None = None
    applied_at: datetime | None = _ts()
    config_pushed_at: datetime | None = _ts()
    config_error: str | None = Field(default=None, sa_column=Column(Text))


class ConfigVersion(SQLModel, table=True):
    """An applied configuration document; rows are never updated or deleted."""

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    author: str
    comment: str = ""
    source: str = ""
    document: dict[str, Any] = _json()
    checksum: str = Field(index=True)


class Connector(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    kind: str
    options: dict[str, Any] = _json()
    config_version: int


class Pipeline(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    source_connector: str
    source_table: str | None = None
    source_query: str | None = Field(default=None, sa_column=Column(Text))
    destination_connector: str
    destination_table: str
    mode: str = "replace"
    batch_size: int = 10_000
    cursor_column: str | None = None
    key_columns: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    schema_drift: str = "add"
    schedule: str | None = None
    timezone: str = "UTC"
    schedule_since: datetime | None = _ts()
    daemon: str | None = None
    labels: dict[str, str] = _json()
    enabled: bool = True
    paused: bool = False  # operational, set by `mycelial pause`; survives config applies
    catchup: str = "latest"
    max_catchup: int = 10
    overlap: str = "skip"
    max_active_runs: int = 1
    max_attempts: int = 3
    retry_backoff: float = 10.0
    retry_backoff_max: float = 600.0
    timeout: float | None = None
    config_version: int


class Run(SQLModel, table=True):
    __table_args__ = (
        Index("ix_run_pipeline_created", "pipeline", "created_at"),
        # the scheduler asks for each pipeline's newest fire on every tick
        Index("ix_run_pipeline_scheduled", "pipeline", "scheduled_for"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_key: str = Field(unique=True, index=True)
    pipeline: str
    trigger: RunTrigger = _enum(RunTrigger, RunTrigger.MANUAL)
    scheduled_for: datetime | None = _ts()
    daemon: str | None = None
    state: RunState = _enum(RunState, RunState.QUEUED, index=True)
    attempt: int = 1
    task_id: str | None = None
    deliveries: int = 0
    # the newest run event seq applied to the current attempt (cp/event_order.py)
    last_event_seq: int | None = Field(default=None, sa_type=BigInteger)  # daemons number past 2**32
    next_attempt_at: datetime | None = _ts()
    published_at: datetime | None = _ts()
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    queued_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    # first heartbeat (control-plane clock) that did not list the running attempt (cp/failover.py)
    unlisted_since: datetime | None = _ts()
    rows_read: int = 0
    rows_written: int = 0
    cursor_before: str | None = None
    cursor_after: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    error_retryable: bool = False
    cancel_requested_at: datetime | None = _ts()


class RunAttempt(SQLModel, table=True):
    """One attempt of a run, kept when the run is retried."""

    __table_args__ = (UniqueConstraint("run_key", "attempt", name="uq_runattempt_key_attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    run_key: str = Field(index=True)
    attempt: int
    daemon: str | None = None
    task_id: str | None = None
    state: RunState = _enum(RunState, RunState.QUEUED)
    queued_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    deliveries: int = 0
    rows_read: int = 0
    rows_written: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text))


class RunStateChange(SQLModel, table=True):
    """A run moved from one state to another (cp/run_history.py): written in the transaction
    that moved it. ``to_state`` is a RunState value, or ``retrying`` / ``moved`` when an attempt
    ended and the run went back to ``scheduled`` for the next one."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    run_key: str = Field(index=True)
    pipeline: str = Field(index=True)
    attempt: int
    daemon: str | None = None
    from_state: str | None = Field(default=None, max_length=32)
    to_state: str = Field(max_length=32)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class DaemonEvent(SQLModel, table=True):
    """Something that happened to a daemon: a status change, a config result, a rejected message."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    daemon: str | None = Field(default=None, index=True)
    kind: str
    from_status: str | None = None
    to_status: str | None = None
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class LogRecord(SQLModel, table=True):
    """A daemon's log record, shipped in batches (docs/logs.md); (daemon, seq) is unique, so a
    redelivered batch adds nothing. ``id`` grows in the order records were stored: ``mycelial
    logs --follow`` reads what is newer than the last id it printed."""

    __table_args__ = (
        UniqueConstraint("daemon", "seq", name="uq_logrecord_daemon_seq"),
        Index("ix_logrecord_daemon_ts", "daemon", "ts"),
        Index("ix_logrecord_pipeline_ts", "pipeline", "ts"),
        Index("ix_logrecord_level_ts", "level", "ts"),
    )

    id: int | None = Field(default=None, primary_key=True)
    daemon: str
    seq: int = Field(sa_type=BigInteger)
    ts: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    level: str
    logger: str
    pipeline: str | None = None
    run_key: str | None = Field(default=None, index=True)
    attempt: int | None = None
    message: str = Field(sa_column=Column(Text, nullable=False))


class UndeclaredDaemon(SQLModel, table=True):
    """A name that said hello or sent heartbeats without being declared in the configuration.

    Kept apart from ``Daemon`` so that nothing which schedules, places, probes or fails over can
    ever use it; the number of rows is bounded (``undeclared_daemons_max``).
    """

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    first_seen_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # updated at most once per ``undeclared_record_interval``: this is not a heartbeat
    last_seen_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    last_event_at: datetime | None = _ts()
    hostname: str | None = None
    software_version: str | None = None


class DaemonKey(SQLModel, table=True):
    """The public key a daemon enrolled with (docs/security.md); one row per name.

    Re-enrolling replaces the key; revoking sets ``revoked_at``, and from then on the control
    plane refuses every message signed by it. The private key never leaves the daemon.
    """

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    key_id: str
    public_key: str  # 32 bytes, base64url
    enrolled_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    revoked_at: datetime | None = _ts()


class EnrollmentToken(SQLModel, table=True):
    """A single-use enrolment token: only the SHA-256 of its secret is kept."""

    id: int | None = Field(default=None, primary_key=True)
    token_id: str = Field(unique=True, index=True)
    name: str = Field(index=True)
    secret_digest: str  # hex SHA-256 of the token's secret: the key of the enrolment proof
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    used_at: datetime | None = _ts()
    used_by_key: str | None = None


class ProcessSeen(SQLModel, table=True):
    """A control-plane process (worker or beat) or the health check, seen alive (cp/liveness.py).

    Workers and beat overwrite their row every ``liveness_interval``; the health check its one row
    each time it runs. `mycelial status` reads them; a stopped process leaves its row behind.
    """

    __table_args__ = (UniqueConstraint("kind", "name", name="uq_processseen_kind_name"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str  # worker, beat or health_check
    name: str  # host:pid of the process (the health check: the process that ran it last)
    hostname: str = ""
    pid: int | None = None
    started_at: datetime | None = _ts()
    seen_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    stopped_at: datetime | None = _ts()  # a clean shutdown says so
