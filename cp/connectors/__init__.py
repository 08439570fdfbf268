"""Connector kinds known to the control plane, with the options each one takes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SqliteOptions(BaseModel):
    """A SQLite database file; a relative path is resolved against the daemon's home directory."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)


CONNECTOR_KINDS: dict[str, type[BaseModel]] = {
    "sqlite": SqliteOptions,
}
