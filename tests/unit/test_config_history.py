"""`config history` lists versions without loading their documents, however large they are."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cp.db import create_schema, make_engine
from cp.models import ConfigVersion
from cp.settings import normalize_database_url
from cp.views import config_history_rows

VERSIONS = 200
DOCUMENT_BYTES = 1024 * 1024
START = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def history_engine(
    request: pytest.FixtureRequest, make_database_url: Callable[[str], str]
) -> Iterator[Engine]:
    engine = make_engine(normalize_database_url(make_database_url(request.param)))
    create_schema(engine)
    yield engine
    engine.dispose()


def big_document(version: int) -> dict[str, object]:
    """About 1 MB: three pipelines, two daemons, and a padding that no listing needs."""
    padding = "x" * (DOCUMENT_BYTES // 3)
    return {
        "daemons": [{"name": f"edge-{n}", "labels": {}} for n in range(2)],
        "connectors": [],
        "pipelines": [{"name": f"p{version}-{n}", "note": padding} for n in range(3)],
    }


def store_versions(engine: Engine, count: int) -> None:
    with Session(engine) as session:
        for version in range(1, count + 1):
            session.add(
                ConfigVersion(
                    created_at=START + timedelta(minutes=version),
                    author="test",
                    comment=f"change {version}",
                    source="big.yaml",
                    document=big_document(version),
                    checksum=f"{version:064x}",
                )
            )
            if version % 20 == 0:
                session.commit()  # keep the session that writes them small too
                session.expunge_all()
        session.commit()


def test_history_counts_pipelines_and_daemons_in_the_database(history_engine: Engine) -> None:
    store_versions(history_engine, 3)

    with Session(history_engine) as session:
        rows = config_history_rows(session, limit=2)

    assert rows == [
        {
            "version": version,
            "created_at": (START + timedelta(minutes=version)).isoformat(),
            "author": "test",
            "comment": f"change {version}",
            "source": "big.yaml",
            "checksum": f"{version:064x}",
            "pipelines": 3,
            "daemons": 2,
        }
        for version in (3, 2)
    ]


def test_history_never_selects_the_documents(history_engine: Engine) -> None:
    store_versions(history_engine, 2)
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(history_engine, "before_cursor_execute", listener)
    try:
        with Session(history_engine) as session:
            config_history_rows(session)
    finally:
        event.remove(history_engine, "before_cursor_execute", listener)

    (select,) = [s for s in statements if "from configversion" in s.lower()]
    columns = select.lower().split(" from ")[0]
    # the document appears only inside the two counts, never as a column of its own
    assert columns.count("configversion.document") == 2
    assert columns.count("json_array_length(") == 2


def test_history_stays_flat_in_memory_with_200_documents_of_1_mb(history_engine: Engine) -> None:
    store_versions(history_engine, VERSIONS)

    tracemalloc.start()
    try:
        with Session(history_engine) as session:
            rows = config_history_rows(session, limit=VERSIONS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [r["version"] for r in rows] == list(range(VERSIONS, 0, -1))
    assert all(r["pipelines"] == 3 for r in rows)
    # loading the documents would take at least VERSIONS * DOCUMENT_BYTES (200 MB)
    assert peak < 10 * 1024 * 1024
