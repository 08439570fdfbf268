"""Process settings, read from ``MYCELIAL_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cp.tls.broker import BrokerTls, is_tls_url, url_tls_problem
from cp.tls.database import postgres_tls_problem

# --- message limits (docs/protocol.md#limits) ----------------------------------------------
# Fixed, not per process: both ends of a queue must agree on what a valid message is.
MAX_NAME_CHARS = 63  # daemon, pipeline and connector names (cp.protocol.NAME_PATTERN)
MAX_ID_CHARS = 200  # task ids, run keys, probe ids: printable ASCII without spaces
MAX_TEXT_CHARS = 255  # short free text: versions, host names, log levels, table and column names
MAX_ERROR_CHARS = 8_000  # error text in run events and config results (senders clip to it)
MAX_LOG_MESSAGE_CHARS = 8_000  # one shipped log record's message
MAX_LOG_BATCH_RECORDS = 1_000  # records in one cp.logs batch
MAX_LOG_BATCH_CHARS = 2_000_000  # characters of all messages of one cp.logs batch
MAX_LABELS = 64  # labels of a daemon or a pipeline selector
MAX_LABEL_VALUE_CHARS = 1_024
MAX_RUN_KEYS = 1_000  # running_runs in a heartbeat, orphaned_task_ids in a hello
MAX_PROGRESS_RUNS = 64  # running runs whose progress one heartbeat reports (the key stays < 256 KiB)
MAX_CURSOR_CHARS = 65_536  # an incremental cursor position
MAX_QUERY_CHARS = 1_000_000  # a pipeline's source query
MAX_PIPELINES = 10_000  # pipelines in one daemon's desired state
MAX_COLUMNS = 1_000  # key columns of a pipeline
MAX_OPTIONS = 256  # options of a connector spec
# Celery headers a message may carry (checked by cp.messaging before Celery reads them)
MAX_HEADER_TEXT_CHARS = 1_024  # argsrepr, kwargsrepr, origin, shadow
MAX_RETRIES_HEADER = 1_000


class SettingsError(ValueError):
    """Raised when the environment holds an invalid setting."""


class Settings(BaseSettings):
    """Everything a control-plane process or a daemon needs to start."""

    model_config = SettingsConfigDict(env_prefix="MYCELIAL_", extra="ignore", frozen=True)

    home: Path = Field(default=Path.home() / ".mycelial")
    broker_url: str | None = None
    # a rediss:// broker is verified against this CA alone (default: the system's trust store);
    # a client certificate and key for brokers that ask for one (docs/security.md)
    broker_ca_file: Path | None = None
    broker_cert_file: Path | None = None
    broker_key_file: Path | None = None
    database_url: str | None = None

    heartbeat_interval: float = Field(default=5.0, gt=0)
    offline_after_missed: int = Field(default=3, ge=1)
    health_check_interval: float = Field(default=1.0, gt=0)
    probe_interval: float = Field(default=15.0, gt=0)
    probe_timeout: float = Field(default=5.0, gt=0)
    backlog_threshold: int = Field(default=100, ge=1)
    lost_after: float = Field(default=0.0, ge=0)
    apply_config_expires: float = Field(default=3600.0, gt=0)
    run_job_expires: float = Field(default=3600.0, gt=0)
    # daemons: Redis hands a job its daemon took and never acknowledged out again after this long
    visibility_timeout: float = Field(default=6 * 3600.0, gt=0)
    unacked_restore_interval: float = Field(default=10.0, gt=0)
    # control-plane workers: their messages are short tasks, so one a dead worker held comes back
    # within about a minute (keep it above the longest cp task, retries' countdowns included)
    cp_visibility_timeout: float = Field(default=60.0, gt=0)
    cp_unacked_restore_interval: float = Field(default=5.0, gt=0)
    # a run the cp believes running that its daemon's heartbeats do not list is missing once it
    # started this long before one (daemon clock), and lost once missing this long, seen by two
    # heartbeats (cp clock): a job that just ended has its last event this long to arrive
    reconcile_grace: float = Field(default=15.0, ge=0)
    schedule_poll_interval: float = Field(default=0.5, gt=0)
    # beat asks a worker to evaluate every alert rule this often (docs/alerts.md)
    alerts_interval: float = Field(default=2.0, gt=0, le=5.0)
    max_deliveries: int = Field(default=3, ge=1)
    # seconds past a run's timeout before the control plane ends a run its daemon has not stopped:
    # covers the daemon's cancel latency and clock skew, so the daemon always stops the job first
    timeout_grace: float = Field(default=30.0, ge=0)
    # retention (cp/retention.py), purged by beat every retention_interval seconds, in chunks of
    # retention_chunk rows per transaction: finished runs and their attempts after retention_days,
    # daemon events and run state changes after event_retention_days, log records after
    # log_retention_days
    retention_days: float = Field(default=30.0, gt=0)
    event_retention_days: float = Field(default=30.0, gt=0)
    log_retention_days: float = Field(default=14.0, gt=0)
    retention_interval: float = Field(default=3600.0, ge=60)
    retention_chunk: int = Field(default=10_000, ge=100, le=100_000)
    # `mycelial up`: each child's output file under MYCELIAL_HOME/logs is rotated past this size,
    # keeping this many earlier files (NAME.log.1 the newest)
    process_log_max_bytes: int = Field(default=10 * 2**20, ge=64 * 2**10)
    process_log_backups: int = Field(default=5, ge=1, le=100)
    # heartbeats are kept in memory, newest per daemon, and written in one UPDATE this often
    heartbeat_flush_interval: float = Field(default=0.5, gt=0)
    # distinct daemons whose heartbeats wait for one flush; more are dropped (and logged)
    heartbeat_pending_max: int = Field(default=100_000, ge=1)
    # control-plane workers and beat note that they are alive this often (`mycelial status`)
    liveness_interval: float = Field(default=5.0, gt=0)
    # an undeclared name is recorded (an event, its last-seen time) at most this often
    undeclared_record_interval: float = Field(default=600.0, gt=0)
    # undeclared names kept, in SQL and in each worker's memory; the least recently seen go first
    undeclared_daemons_max: int = Field(default=1_000, ge=1)

    # alert notices (cp/alerts/delivery.py, docs/notifications.md): beat asks for delivery this
    # often; a failed attempt is tried again after notify_first_retry seconds, doubling (with
    # jitter) up to notify_max_retry, until notify_give_up_after seconds after the notice was
    # written or notify_max_attempts attempts; a claim lasts notify_claim_lease seconds
    notify_interval: float = Field(default=1.0, gt=0)
    notify_first_retry: float = Field(default=5.0, gt=0)
    notify_max_retry: float = Field(default=600.0, gt=0)
    notify_give_up_after: float = Field(default=86_400.0, gt=0)
    notify_max_attempts: int = Field(default=200, ge=1)
    notify_claim_lease: float = Field(default=300.0, ge=200)

    # configuration files are untrusted input; limits and their reasons in docs/configuration.md.
    # 4 MiB holds about 10,000 pipelines and parses in a few seconds:
    config_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    # YAML nodes and characters of values once aliases are expanded (stops "billion laughs"):
    config_max_nodes: int = Field(default=500_000, ge=1)
    config_max_text: int = Field(default=8 * 1024 * 1024, ge=1)
    # nesting depth; a real file needs 6, and deeper input would exhaust the parser's stack:
    config_max_depth: int = Field(default=32, ge=4, le=200)

    # a raw broker message longer than this is dead-lettered before it is decoded
    message_max_bytes: int = Field(default=8 * 2**20, ge=64 * 2**10)
    # messages whose eta is further ahead than this are refused (ours only retry within seconds)
    message_max_eta: float = Field(default=3600.0, gt=0)
    # newest rejected messages kept per queue in the Redis list mycelial.dead.<queue>
    dead_letter_keep: int = Field(default=1_000, ge=0)
    # characters of a rejected message kept in its dead-letter entry
    dead_letter_copy_chars: int = Field(default=4_096, ge=0)
    # rejection events recorded per second (burst: ten times that); the rest are counted
    rejection_events_per_second: float = Field(default=1.0, gt=0)

    # security (docs/security.md): a signed message is valid this long after it was signed
    # (longer when it carries its own expiry: jobs and config pushes), and is refused after
    replay_window: float = Field(default=300.0, ge=5, le=86_400)
    # how long a worker trusts what it read of a daemon's key: a revocation takes effect within it
    key_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # how long an enrolment token printed by `mycelial daemons enroll` stays usable
    enroll_token_ttl: float = Field(default=3600.0, gt=0, le=30 * 86_400)

    # a daemon's messages to the control plane wait in its outbox while the broker is away
    # (workers/outbox.py): at most this many heartbeats, progress events and probe replies ...
    outbox_max_pending: int = Field(default=1000, ge=10)
    # ... retried with backoff up to this many seconds apart, and sent for up to this long when
    # the daemon stops before the rest is spooled to disk
    outbox_retry_max: float = Field(default=2.0, gt=0)
    outbox_close_timeout: float = Field(default=5.0, ge=0)

    # daemons ship their log records at this level and above (DEBUG, INFO, WARNING, ERROR) to
    # the control plane (docs/logs.md): a batch at least every log_batch_interval seconds, or as
    # soon as log_batch_records are waiting, spooled to a file of at most log_spool_max_bytes
    # (the oldest dropped first) until the control plane has stored them
    log_level: str = Field(default="INFO", pattern=r"^(?i:debug|info|warning|error|critical)$")
    log_batch_interval: float = Field(default=1.0, gt=0, le=2.0)
    log_batch_records: int = Field(default=500, ge=1, le=1_000)
    log_spool_max_bytes: int = Field(default=50 * 2**20, ge=2**20)
    # a batch not acknowledged this long is sent again (doubling up to the replay window)
    log_ack_timeout: float = Field(default=10.0, gt=0)

    # daemons: data-plane confinement (workers/confinement/, docs/security.md). File connectors
    # stay under the daemon's data folder and these roots (colon- or comma-separated); the kinds
    # and hosts (comma-separated) it allows, every one when empty
    allowed_roots: str = ""
    allowed_connector_kinds: str = ""
    allowed_hosts: str = ""

    flower_address: str = "127.0.0.1"
    flower_port: int = Field(default=5555, ge=1, le=65535)

    # `mycelial metrics` (docs/metrics.md): where /metrics listens, what a scrape must present
    # (a file holding user:password, and/or one holding a bearer token), and its bounds
    metrics_address: str = "127.0.0.1"
    metrics_port: int = Field(default=9808, ge=0, le=65535)
    metrics_basic_auth_file: Path | None = None
    metrics_bearer_token_file: Path | None = None
    metrics_max_daemons: int = Field(default=5_000, ge=1, le=100_000)
    metrics_max_pipelines: int = Field(default=5_000, ge=1, le=100_000)
    metrics_peek_bytes: int = Field(default=16_384, ge=512, le=1_048_576)
    # control-plane workers add their counters to the broker's hash this often
    metrics_counter_flush_interval: float = Field(default=2.0, gt=0, le=300)

    @field_validator("broker_url")
    @classmethod
    def _known_broker_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0]
        if scheme not in {"redis", "rediss", "redis+socket", "memory"}:
            raise ValueError(f"unsupported broker scheme {scheme!r} (use redis:// or rediss://)")
        problem = url_tls_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("broker_ca_file", "broker_cert_file", "broker_key_file")
    @classmethod
    def _tls_file_for_rediss(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None or str(value) == "":
            return None
        if "broker_url" not in info.data:
            return value  # the URL itself was refused, and said so
        url = info.data["broker_url"]
        if not url or not is_tls_url(url):
            raise ValueError(
                f"{value} is set for a broker that is not rediss:// ({_scheme(url)}); "
                "TLS files apply to rediss:// URLs only"
            )
        if info.field_name == "broker_key_file" and info.data.get("broker_cert_file") is None:
            raise ValueError("a client key needs MYCELIAL_BROKER_CERT_FILE too")
        if not value.is_file():
            raise ValueError(f"{value}: no such file")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0].split("+", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(f"unsupported database scheme {scheme!r} (use sqlite:// or postgresql://)")
        problem = postgres_tls_problem(value) if scheme != "sqlite" else None
        if problem:
            raise ValueError(problem)
        return value

    @property
    def broker_tls(self) -> BrokerTls:
        """How a rediss:// broker is verified (the files' contents are checked by make_celery)."""
        return BrokerTls(
            ca_file=self.broker_ca_file, cert_file=self.broker_cert_file, key_file=self.broker_key_file
        )

    @property
    def effective_database_url(self) -> str:
        """The configured database, or a SQLite file under the home directory."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{self.home / 'mycelial.db'}"

    @property
    def offline_after(self) -> float:
        """Seconds without a heartbeat after which a daemon counts as offline."""
        return self.heartbeat_interval * self.offline_after_missed

    @property
    def seen_within(self) -> float:
        """A worker or beat that noted itself alive within this many seconds counts as running."""
        return 3 * self.liveness_interval

    @property
    def checker_stale_after(self) -> float:
        """Statuses written by a health checker that has not run for this long are shown as stale."""
        return max(self.offline_after, 5 * self.health_check_interval)

    @property
    def embedded_redis_socket(self) -> Path:
        return self.home / "redis" / "redis.socket"


def _scheme(url: str | None) -> str:
    return f"{url.split('://', 1)[0]}://" if url else "the embedded Redis"


def normalize_database_url(url: str) -> str:
    """Map plain ``postgresql://`` URLs to the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MYCELIAL_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once on first use."""
    return load_settings()
