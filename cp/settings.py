"""Process settings, read from ``MYCELIAL_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """Raised when the environment holds an invalid setting."""


class Settings(BaseSettings):
    """Everything a control-plane process or a daemon needs to start."""

    model_config = SettingsConfigDict(env_prefix="MYCELIAL_", extra="ignore", frozen=True)

    home: Path = Field(default=Path.home() / ".mycelial")
    broker_url: str | None = None
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
    max_deliveries: int = Field(default=3, ge=1)
    retention_days: float = Field(default=30.0, gt=0)

    flower_address: str = "127.0.0.1"
    flower_port: int = Field(default=5555, ge=1, le=65535)

    @field_validator("broker_url")
    @classmethod
    def _known_broker_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0]
        if scheme not in {"redis", "rediss", "redis+socket", "memory"}:
            raise ValueError(f"unsupported broker scheme {scheme!r} (use redis:// or rediss://)")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0].split("+", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(f"unsupported database scheme {scheme!r} (use sqlite:// or postgresql://)")
        return value

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
    def embedded_redis_socket(self) -> Path:
        return self.home / "redis" / "redis.socket"


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
