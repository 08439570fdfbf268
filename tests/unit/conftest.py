"""Factory fixtures for the unit suite: a throw-away SQLite database and rows built to order."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cp.config_file import parse_config_text
from cp.config_store import ApplyResult, apply_document
from cp.db import create_schema, make_engine
from cp.models import Connector, Daemon, DaemonStatus, Pipeline, Run, RunState, RunTrigger
from cp.settings import normalize_database_url

SOURCE = "mycelial.yaml"

BASE_CONFIG: dict[str, Any] = {
    "daemons": [
        {"name": "edge-berlin-1", "labels": {"site": "berlin"}},
        {"name": "edge-berlin-2", "labels": {"site": "berlin"}},
        {"name": "edge-paris", "labels": {"site": "paris"}},
    ],
    "connectors": [
        {"name": "shop", "kind": "sqlite", "path": "/data/shop.db"},
        {"name": "warehouse", "kind": "sqlite", "path": "/data/warehouse.db"},
    ],
    "pipelines": [
        {
            "name": "orders",
            "source": {"connector": "shop", "table": "orders"},
            "destination": {"connector": "warehouse", "table": "orders"},
            "schedule": "0 * * * *",
            "daemon": "edge-paris",
        },
        {
            "name": "stock",
            "source": {"connector": "shop", "query": "SELECT * FROM stock"},
            "destination": {"connector": "warehouse", "table": "stock"},
            "schedule": "*/15 * * * *",
            "labels": {"site": "berlin"},
        },
    ],
}


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Run a raw configuration through the real YAML parser and validator."""
    return parse_config_text(yaml.safe_dump(raw, sort_keys=False), source=SOURCE)


@pytest.fixture
def raw_config() -> dict[str, Any]:
    """A fresh, valid configuration (3 daemons, 2 connectors, 2 pipelines) to edit per test."""
    return copy.deepcopy(BASE_CONFIG)


@pytest.fixture
def normalized() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The validator as a function: raw configuration in, normalized document out."""
    return validate


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cp.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine_on_both(
    request: pytest.FixtureRequest, make_database_url: Callable[[str], str]
) -> Iterator[Engine]:
    """An engine on SQLite, then on PostgreSQL; a module that overrides ``engine`` with it runs
    every test on both (test_retention.py)."""
    engine = make_engine(normalize_database_url(make_database_url(request.param)))
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def apply(session: Session) -> Callable[..., ApplyResult]:
    """Validate and apply a raw configuration at ``now``, committing like the CLI does."""

    def apply(raw: dict[str, Any], *, now: datetime) -> ApplyResult:
        result = apply_document(session, validate(raw), author="test", comment="", source=SOURCE, now=now)
        session.commit()
        return result

    return apply


@pytest.fixture
def get_daemon(session: Session) -> Callable[[str], Daemon]:
    def get_daemon(name: str) -> Daemon:
        return session.exec(select(Daemon).where(Daemon.name == name)).one()

    return get_daemon


@pytest.fixture
def get_pipeline(session: Session) -> Callable[[str], Pipeline]:
    def get_pipeline(name: str) -> Pipeline:
        return session.exec(select(Pipeline).where(Pipeline.name == name)).one()

    return get_pipeline


@pytest.fixture
def add_daemon(session: Session) -> Callable[..., Daemon]:
    """Insert a daemon row; declared and online unless told otherwise."""

    def add_daemon(
        name: str,
        *,
        labels: dict[str, str] | None = None,
        status: DaemonStatus = DaemonStatus.ONLINE,
        declared: bool = True,
        last_heartbeat_at: datetime | None = None,
    ) -> Daemon:
        daemon = Daemon(
            name=name,
            labels=labels or {},
            status=status,
            declared=declared,
            last_heartbeat_at=last_heartbeat_at,
        )
        session.add(daemon)
        session.commit()
        return daemon

    return add_daemon


@pytest.fixture
def add_pipeline(session: Session) -> Callable[..., Pipeline]:
    """Insert a pipeline row (and the two SQLite connectors it copies between, once)."""

    def add_pipeline(
        name: str,
        *,
        daemon: str | None = None,
        labels: dict[str, str] | None = None,
        schedule: str | None = "0 * * * *",
        timezone: str = "UTC",
        enabled: bool = True,
        schedule_since: datetime | None = None,
        **policy: Any,
    ) -> Pipeline:
        for connector in ("shop", "warehouse"):
            if session.exec(select(Connector).where(Connector.name == connector)).first() is None:
                options = {"path": f"{connector}.db"}
                session.add(Connector(name=connector, kind="sqlite", options=options, config_version=1))
        pipeline = Pipeline(
            name=name,
            source_connector="shop",
            source_table=name,
            destination_connector="warehouse",
            destination_table=name,
            schedule=schedule,
            timezone=timezone,
            schedule_since=schedule_since or datetime(2025, 6, 2, 0, 0, tzinfo=UTC),
            daemon=daemon,
            labels=labels or {},
            enabled=enabled,
            config_version=1,
            **policy,
        )
        session.add(pipeline)
        session.commit()
        return pipeline

    return add_pipeline


@pytest.fixture
def add_run(session: Session) -> Callable[..., Run]:
    """Insert a manual run row in ``state`` on ``daemon``."""

    def add_run(
        run_key: str,
        *,
        daemon: str | None = "edge-1",
        state: RunState = RunState.QUEUED,
        pipeline: str = "orders",
    ) -> Run:
        run = Run(
            run_key=run_key,
            pipeline=pipeline,
            trigger=RunTrigger.MANUAL,
            daemon=daemon,
            state=state,
            created_at=datetime(2025, 6, 2, 12, 0, tzinfo=UTC),
            queued_at=datetime(2025, 6, 2, 12, 0, tzinfo=UTC),
            task_id=run_key,
        )
        session.add(run)
        session.commit()
        return run

    return add_run
