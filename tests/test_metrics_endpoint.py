"""/metrics served in-process on a free port over a real Redis broker and a real database (SQLite
and PostgreSQL), scraped with a real HTTP client and parsed with prometheus-client's parser: a
live daemon and a dead one whose queue holds signed messages nobody consumes, runs, and refusal
of scrapes without the right credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlmodel import col

from cp.config_store import apply_document, current_author
from cp.metrics.process import metrics_auth, start_metrics
from cp.models import Daemon, Run, RunState, utcnow
from cp.security.cp_keys import ControlPlaneKeys
from cp.settings import Settings
from tests.conftest import Broker
from tests.unit.conftest import validate

pytestmark = pytest.mark.integration
TOKEN = "metrics-test-token-0123456789"

CONFIG: dict[str, Any] = {
    "daemons": [{"name": "edge-live"}, {"name": "edge-dead"}],
    "connectors": [
        {"name": "shop", "kind": "sqlite", "path": "/data/shop.db"},
        {"name": "warehouse", "kind": "sqlite", "path": "/data/warehouse.db"},
    ],
    "pipelines": [
        {
            "name": "orders",
            "source": {"connector": "shop", "table": "orders"},
            "destination": {"connector": "warehouse", "table": "orders"},
            "daemon": "edge-live",
        }
    ],
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(
    request: pytest.FixtureRequest, tmp_path: Path, broker: Broker, make_database_url: Callable[[str], str]
) -> Iterator[tuple[str, Settings]]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (tmp_path / "token").write_text(TOKEN + "\n")
    settings = Settings(
        home=home,
        broker_url=broker.fresh_url(),
        database_url=make_database_url(request.param),
        metrics_bearer_token_file=tmp_path / "token",
    )
    ControlPlaneKeys(home).current()  # what a control-plane process makes on its first start
    server, cp = start_metrics(settings, address="127.0.0.1", port=0, auth=metrics_auth(settings))
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", settings
    finally:
        server.shutdown()
        server.server_close()
        cp.engine.dispose()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_scrape_shows_live_and_dead_daemons_their_queues_and_runs_and_refuses_strangers(
    served: tuple[str, Settings],
) -> None:
    url, settings = served
    from cp.runtime import ControlPlane

    cp = ControlPlane(settings)
    now = utcnow()
    with cp.session() as session:
        result = apply_document(
            session, validate(CONFIG), author=current_author(), comment="", source="test", now=now
        )
    cp.push_configs(result.pushes)  # one signed apply_config message on each daemon's queue
    cp.push_configs(result.pushes)
    with cp.session() as session:
        session.exec(update(Daemon).where(col(Daemon.name) == "edge-live").values(last_heartbeat_at=utcnow()))
        started = now - timedelta(seconds=30)
        session.add(
            Run(
                run_key="orders:1",
                pipeline="orders",
                state=RunState.SUCCEEDED,
                created_at=started,
                started_at=started,
                finished_at=started + timedelta(seconds=12),
                rows_written=7,
            )
        )
        session.add(Run(run_key="orders:2", pipeline="orders", state=RunState.FAILED, created_at=started))

    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Basic {TOKEN}"}, timeout=10).status_code == 401
    response = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)

    def value(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    assert value("mycelial_daemon_status", daemon="edge-live", status="online") == 1
    assert value("mycelial_daemon_status", daemon="edge-dead", status="online") == 0
    assert value("mycelial_daemon_queue_depth", daemon="edge-dead") == 2
    dead_age = value("mycelial_daemon_queue_oldest_message_age_seconds", daemon="edge-dead")
    assert dead_age is not None and 0 < dead_age < 600  # from the signed envelope of the oldest push
    assert value("mycelial_daemon_config_desired_version", daemon="edge-dead") == result.version
    assert value("mycelial_pipeline_runs", pipeline="orders", state="succeeded") == 1
    assert value("mycelial_pipeline_runs", pipeline="orders", state="failed") == 1
    assert value("mycelial_pipeline_last_success_timestamp_seconds", pipeline="orders") == pytest.approx(
        (started + timedelta(seconds=12)).timestamp()
    )
    assert value("mycelial_pipeline_run_duration_seconds_bucket", pipeline="orders", le="15.0") == 1
    assert value("mycelial_metrics_source_up", source="broker") == 1
    assert value("mycelial_metrics_source_up", source="database") == 1
    other = httpx.get(url.replace("/metrics", "/other"), headers={"Authorization": f"Bearer {TOKEN}"})
    assert other.status_code == 404


def test_metrics_refuses_to_listen_beyond_loopback_without_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env.update(MYCELIAL_HOME=str(home), MYCELIAL_BROKER_URL="redis://127.0.0.1:1/0")
    argv = [sys.executable, "-m", "cp.cli", "metrics", "--address", "0.0.0.0", "--port", "0"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without credentials" in result.stderr
    (tmp_path / "token").write_text("")
    env["MYCELIAL_METRICS_BEARER_TOKEN_FILE"] = str(tmp_path / "token")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "bearer token file" in result.stderr and "empty" in result.stderr


def test_beat_flushes_the_runs_its_transactions_finish_to_the_broker(
    tmp_path: Path, broker: Broker, make_database_url: Callable[[str], str]
) -> None:
    from cp.celery_app import make_celery
    from cp.db import create_schema, make_engine, session_scope
    from cp.messaging.broker_client import broker_client
    from cp.metrics.counters import COUNTERS_KEY
    from cp.metrics.worker_counters import count_in_beat
    from cp.settings import normalize_database_url
    from tests.conftest import wait_for

    settings = Settings(home=tmp_path, broker_url=broker.fresh_url(), metrics_counter_flush_interval=0.2)
    app = make_celery(settings)
    engine = make_engine(normalize_database_url(make_database_url("sqlite")))
    create_schema(engine)
    flusher = count_in_beat(app, settings)
    opened = broker_client(app)
    assert opened is not None
    connection, client = opened
    try:
        with session_scope(engine) as session:
            session.add(Run(run_key="r", pipeline="gone", state=RunState.CANCELLED, created_at=utcnow()))
        field = b"runs_finished|gone|cancelled"
        wait_for(lambda: client.hget(COUNTERS_KEY, field) == b"1", timeout=10, what="the count in Redis")
    finally:
        flusher.stop()
        connection.release()
        engine.dispose()
