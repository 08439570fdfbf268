"""Store a validated configuration document and work out each daemon's desired state."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from cp.config_diff import diff_documents
from cp.config_file import checksum, matches_selector
from cp.models import ConfigVersion, Connector, Daemon, Pipeline
from cp.protocol import ConnectorSpec, DesiredState, PipelineSpec


@dataclass(frozen=True)
class ConfigPush:
    """A daemon whose desired state changed and must be sent its full new state."""

    daemon: str
    version: int
    checksum: str
    state: DesiredState


@dataclass
class ApplyResult:
    version: int | None
    changed: bool
    diff: list[str]
    pushes: list[ConfigPush] = field(default_factory=list)


def current_author() -> str:
    """Who applies a config: the login name, or ``uid:N`` where the uid has no passwd entry."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def latest_version(session: Session) -> ConfigVersion | None:
    return session.exec(select(ConfigVersion).order_by(col(ConfigVersion.id).desc()).limit(1)).first()


def plan_diff(session: Session, document: dict[str, Any]) -> list[str]:
    """What applying ``document`` would change, against the newest stored version."""
    latest = latest_version(session)
    return diff_documents(latest.document if latest else None, document)


def apply_document(
    session: Session,
    document: dict[str, Any],
    *,
    author: str,
    comment: str,
    source: str,
    now: datetime,
) -> ApplyResult:
    """Store ``document`` as a new version and sync tables; the caller commits, then pushes."""
    latest = latest_version(session)
    diff = diff_documents(latest.document if latest else None, document)
    digest = checksum(document)
    if latest is not None and latest.checksum == digest:
        return ApplyResult(version=latest.id, changed=False, diff=[])

    version = ConfigVersion(
        created_at=now,
        author=author,
        comment=comment,
        source=source,
        document=document,
        checksum=digest,
    )
    session.add(version)
    session.flush()
    assert version.id is not None
    _sync_connectors(session, document["connectors"], version.id)
    _sync_pipelines(session, document["pipelines"], version.id, now)
    _sync_daemons(session, document["daemons"])
    session.flush()
    pushes = _update_desired_states(session, version.id)
    return ApplyResult(version=version.id, changed=True, diff=diff, pushes=pushes)


def _sync_connectors(session: Session, items: list[dict[str, Any]], version: int) -> None:
    existing = {c.name: c for c in session.exec(select(Connector))}
    for item in items:
        row = existing.pop(item["name"], None) or Connector(
            name=item["name"], kind=item["kind"], config_version=version
        )
        row.kind, row.options, row.config_version = item["kind"], item["options"], version
        session.add(row)
    for stale in existing.values():
        session.delete(stale)


def _sync_pipelines(session: Session, items: list[dict[str, Any]], version: int, now: datetime) -> None:
    existing = {p.name: p for p in session.exec(select(Pipeline))}
    for item in items:
        row = existing.pop(item["name"], None)
        if row is None:
            row = Pipeline(
                name=item["name"],
                source_connector=item["source"]["connector"],
                destination_connector=item["destination"]["connector"],
                destination_table=item["destination"]["table"],
                config_version=version,
            )
        schedule_changed = row.schedule_since is None or (
            row.schedule,
            row.timezone,
            row.enabled,
        ) != (item["schedule"], item["timezone"], item["enabled"])
        row.source_connector = item["source"]["connector"]
        row.source_table = item["source"]["table"]
        row.source_query = item["source"]["query"]
        row.destination_connector = item["destination"]["connector"]
        row.destination_table = item["destination"]["table"]
        row.mode = item["mode"]
        row.batch_size = item["batch_size"]
        row.cursor_column = item["cursor_column"]
        row.key_columns = item["key_columns"]
        row.schema_drift = item["schema_drift"]
        row.schedule = item["schedule"]
        row.timezone = item["timezone"]
        row.daemon = item["daemon"]
        row.labels = item["labels"] or {}
        row.enabled = item["enabled"]
        row.catchup, row.max_catchup = item["catchup"], item["max_catchup"]
        row.overlap, row.max_active_runs = item["overlap"], item["max_active_runs"]
        retries = item["retries"]
        row.max_attempts, row.retry_backoff = retries["max_attempts"], retries["backoff"]
        row.retry_backoff_max = retries["max_backoff"]
        row.timeout = item["timeout"]
        row.config_version = version
        if schedule_changed:
            # fires are counted from here on: a new or edited schedule does not catch up on the past
            row.schedule_since = now
        session.add(row)
    for stale in existing.values():
        session.delete(stale)


def _sync_daemons(session: Session, items: list[dict[str, Any]]) -> None:
    existing = {d.name: d for d in session.exec(select(Daemon))}
    for item in items:
        row = existing.pop(item["name"], None) or Daemon(name=item["name"])
        row.labels, row.declared = item["labels"], True
        session.add(row)
    for undeclared in existing.values():
        undeclared.declared = False
        session.add(undeclared)


def pipeline_spec(session: Session, pipeline: Pipeline) -> PipelineSpec:
    """The self-contained description of a pipeline that travels to a daemon."""
    connectors = {
        c.name: c
        for c in session.exec(
            select(Connector).where(
                col(Connector.name).in_([pipeline.source_connector, pipeline.destination_connector])
            )
        )
    }

    def spec(name: str) -> ConnectorSpec:
        row = connectors[name]
        return ConnectorSpec(name=row.name, kind=row.kind, options=row.options)

    return PipelineSpec(
        name=pipeline.name,
        source=spec(pipeline.source_connector),
        source_table=pipeline.source_table,
        source_query=pipeline.source_query,
        destination=spec(pipeline.destination_connector),
        destination_table=pipeline.destination_table,
        mode=pipeline.mode,
        batch_size=pipeline.batch_size,
        cursor_column=pipeline.cursor_column,
        key_columns=pipeline.key_columns,
        schema_drift=pipeline.schema_drift,
    )


def desired_state(session: Session, daemon: Daemon) -> DesiredState:
    """Everything ``daemon`` should know: its labels and the pipelines that may run on it."""
    pipelines = [
        pipeline_spec(session, p)
        for p in session.exec(select(Pipeline).order_by(col(Pipeline.name)))
        if eligible(p, daemon)
    ]
    return DesiredState(daemon=daemon.name, labels=daemon.labels, pipelines=pipelines)


def eligible(pipeline: Pipeline, daemon: Daemon) -> bool:
    """Whether ``pipeline``'s placement allows it to run on ``daemon``."""
    if pipeline.daemon is not None:
        return pipeline.daemon == daemon.name
    return daemon.declared and matches_selector(daemon.labels, pipeline.labels)


def _update_desired_states(session: Session, version: int) -> list[ConfigPush]:
    pushes: list[ConfigPush] = []
    for daemon in session.exec(select(Daemon).order_by(col(Daemon.name))):
        state = desired_state(session, daemon)
        digest = checksum(state.model_dump(mode="json"))
        if digest == daemon.desired_checksum:
            continue
        daemon.desired_config_version, daemon.desired_checksum = version, digest
        session.add(daemon)
        pushes.append(ConfigPush(daemon=daemon.name, version=version, checksum=digest, state=state))
    return pushes


def current_push(session: Session, daemon: Daemon) -> ConfigPush | None:
    """The push that brings ``daemon`` to its desired state, or None when it has none yet."""
    if daemon.desired_config_version is None or daemon.desired_checksum is None:
        return None
    return ConfigPush(
        daemon=daemon.name,
        version=daemon.desired_config_version,
        checksum=daemon.desired_checksum,
        state=desired_state(session, daemon),
    )
