"""Two transactions queueing runs of one pipeline at the same moment, on SQLite and PostgreSQL:
each reads the pipeline's active runs, then claims, so without taking turns both would see room."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlmodel import Session, select

from cp.db import create_schema, make_engine
from cp.dispatch import Outgoing
from cp.models import Connector, Daemon, DaemonStatus, Pipeline, Run, RunState, RunTrigger
from cp.runs import create_run, queue_run
from cp.settings import normalize_database_url

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_manual_runs_queued_at_once_fill_one_slot(
    make_database_url: Callable[[str], str], kind: str
) -> None:
    engine = make_engine(normalize_database_url(make_database_url(kind)))
    create_schema(engine)
    try:
        with Session(engine) as session:
            session.add(Daemon(name="edge-1", labels={}, status=DaemonStatus.ONLINE, declared=True))
            for name in ("shop", "warehouse"):
                session.add(
                    Connector(name=name, kind="sqlite", options={"path": f"{name}.db"}, config_version=1)
                )
            session.add(
                Pipeline(
                    name="orders",
                    source_connector="shop",
                    source_table="orders",
                    destination_connector="warehouse",
                    destination_table="orders",
                    daemon="edge-1",
                    labels={},
                    config_version=1,
                )
            )
            session.commit()
            runs = [
                create_run(session, _pipeline(session), trigger=RunTrigger.MANUAL, now=NOW) for _ in range(2)
            ]
            session.commit()
            ids = [run.id for run in runs if run is not None]

        outcomes: dict[str, Outgoing | None] = {}

        def queue(name: str, run_id: int | None, *, hold: float = 0.0) -> None:
            with Session(engine, expire_on_commit=False) as session:
                run = session.get(Run, run_id)
                assert run is not None
                outcomes[name] = queue_run(session, run, _pipeline(session), now=NOW, expires=60)
                time.sleep(hold)  # still uncommitted: the other transaction reads meanwhile
                session.commit()

        first = threading.Thread(target=queue, args=("first", ids[0]), kwargs={"hold": 1.0})
        first.start()
        time.sleep(0.3)  # the first has claimed its run and holds its transaction open
        queue("second", ids[1])
        first.join()

        assert outcomes["first"] is not None and outcomes["second"] is None
        with Session(engine) as session:
            states = sorted(r.state for r in session.exec(select(Run)))
        assert states == sorted([RunState.QUEUED, RunState.SCHEDULED])
    finally:
        engine.dispose()


def _pipeline(session: Session) -> Pipeline:
    return session.exec(select(Pipeline).where(Pipeline.name == "orders")).one()
