"""The collector over real SQL (SQLite and PostgreSQL) and a Redis double: values, caps, alerts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cp.health import HealthLimits
from cp.metrics.collector import CollectorLimits, ControlPlaneCollector
from cp.metrics.counters import HANDLED, ROWS_WRITTEN, RUNS_FINISHED, SharedCounters
from cp.models import Alert, AlertState, Daemon, Pipeline, Run, RunState, RunTrigger

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
LIMITS = HealthLimits(offline_after=15, probe_timeout=5, backlog_threshold=100)


@pytest.fixture
def engine(engine_on_both: Engine) -> Engine:
    return engine_on_both


def collector(engine: Engine, client: Any, *, max_daemons: int = 100, max_pipelines: int = 100) -> Any:
    @contextmanager
    def session() -> Iterator[Session]:
        with Session(engine) as s:
            yield s

    @contextmanager
    def broker() -> Iterator[Any]:
        yield client

    return ControlPlaneCollector(
        session=session,
        broker=broker,
        limits=CollectorLimits(
            health=LIMITS,
            stale_after=15,
            max_daemons=max_daemons,
            max_pipelines=max_pipelines,
            peek_bytes=4096,
        ),
        clock=lambda: NOW,
    )


def scrape(coll: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(coll)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def run(
    key: str, state: RunState, *, pipeline: str = "orders", seconds: float | None = None, **kw: Any
) -> Run:
    started = NOW - timedelta(hours=1)
    return Run(
        run_key=key,
        pipeline=pipeline,
        state=state,
        created_at=started,
        started_at=started if seconds is not None else None,
        finished_at=started + timedelta(seconds=seconds) if seconds is not None else None,
        **kw,
    )


def seed(session: Session) -> None:
    session.add(Daemon(name="edge-a", declared=True, last_heartbeat_at=NOW - timedelta(seconds=2),
                       cpu_percent=50.0, memory_mb=64.0, running_runs=1, last_probe_rtt_ms=12.0,
                       desired_config_version=3, applied_config_version=2))  # fmt: skip
    session.add(Daemon(name="edge-b", declared=True, last_heartbeat_at=NOW - timedelta(minutes=10)))
    session.add(Daemon(name="edge-c", declared=True))
    session.add(Daemon(name="gone", declared=False))
    for name in ("orders", "stock"):
        session.add(Pipeline(name=name, source_connector="s", destination_connector="d",
                             destination_table=name, config_version=1))  # fmt: skip
    session.add(run("r1", RunState.SUCCEEDED, seconds=3))
    session.add(run("r2", RunState.SUCCEEDED, seconds=100))
    session.add(run("r3", RunState.FAILED, seconds=20))
    session.add(run("r4", RunState.RUNNING))
    fired = NOW - timedelta(minutes=5)
    session.add(run("r5", RunState.SUCCEEDED, pipeline="stock", seconds=1, trigger=RunTrigger.SCHEDULE))
    session.commit()
    stock = session.get(Run, 5)
    assert stock is not None
    stock.scheduled_for, stock.started_at = fired, fired + timedelta(seconds=0.2)
    stock.finished_at = fired + timedelta(seconds=1.2)
    session.add(stock)
    session.commit()


def test_daemons_pipelines_and_counters_read_in_one_scrape(engine: Engine) -> None:
    with Session(engine) as session:
        seed(session)
    client = fakeredis.FakeRedis()
    counters = SharedCounters(is_known_task=lambda t: t == "cp.run_event")
    counters.add(HANDLED, "cp.run_event", amount=7)
    counters.add(RUNS_FINISHED, "orders", "succeeded", amount=2)
    counters.add(ROWS_WRITTEN, "orders", amount=500)
    counters.add(ROWS_WRITTEN, "removed-pipeline", amount=1)

    @contextmanager
    def scope() -> Iterator[Any]:
        yield client

    counters.flush(scope)
    got = scrape(collector(engine, client))

    def value(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    assert value("mycelial_daemon_status", daemon="edge-a", status="online") == 1.0
    assert value("mycelial_daemon_status", daemon="edge-a", status="offline") == 0.0
    assert value("mycelial_daemon_status", daemon="edge-b", status="offline") == 1.0
    assert value("mycelial_daemon_status", daemon="gone", status="online") is None  # not declared
    assert value("mycelial_daemon_heartbeat_age_seconds", daemon="edge-a") == 2.0
    assert value("mycelial_daemon_probe_rtt_seconds", daemon="edge-a") == 0.012
    assert value("mycelial_daemon_cpu_ratio", daemon="edge-a") == 0.5
    assert value("mycelial_daemon_memory_bytes", daemon="edge-a") == 64 * 2**20
    assert value("mycelial_daemon_running_runs", daemon="edge-a") == 1
    assert value("mycelial_daemon_config_desired_version", daemon="edge-a") == 3
    assert value("mycelial_daemon_config_applied_version", daemon="edge-a") == 2
    # every declared daemon's queue, though nobody consumes it
    assert value("mycelial_daemon_queue_depth", daemon="edge-c") == 0
    assert value("mycelial_pipeline_runs", pipeline="orders", state="succeeded") == 2
    assert value("mycelial_pipeline_runs", pipeline="orders", state="running") == 1
    assert (
        value("mycelial_pipeline_last_success_timestamp_seconds", pipeline="orders")
        == (NOW - timedelta(hours=1) + timedelta(seconds=100)).timestamp()
    )
    # durations 3, 20 and 100 s; a running run has none
    assert value("mycelial_pipeline_run_duration_seconds_bucket", pipeline="orders", le="5.0") == 1
    assert value("mycelial_pipeline_run_duration_seconds_bucket", pipeline="orders", le="30.0") == 2
    assert value("mycelial_pipeline_run_duration_seconds_bucket", pipeline="orders", le="+Inf") == 3
    assert value("mycelial_pipeline_run_duration_seconds_gcount", pipeline="orders") == 3
    assert value("mycelial_pipeline_run_duration_seconds_gsum", pipeline="orders") == pytest.approx(123)
    assert value("mycelial_pipeline_schedule_delay_seconds_bucket", pipeline="stock", le="0.25") == 1
    assert value("mycelial_pipeline_schedule_delay_seconds_bucket", pipeline="stock", le="0.1") == 0
    assert value("mycelial_pipeline_schedule_delay_seconds_bucket", pipeline="orders", le="+Inf") is None
    assert value("mycelial_cp_messages_handled_total", task="cp.run_event") == 7
    assert value("mycelial_pipeline_runs_finished_total", pipeline="orders", state="succeeded") == 2
    assert value("mycelial_pipeline_rows_written_total", pipeline="orders") == 500
    assert value("mycelial_pipeline_rows_written_total", pipeline="removed-pipeline") is None
    assert value("mycelial_metrics_source_up", source="database") == 1
    assert value("mycelial_metrics_source_up", source="broker") == 1
    assert not any(name == "mycelial_alerts" for name, _ in got)  # no alerts: no series


def test_past_the_caps_daemons_and_pipelines_are_dropped_and_counted(engine: Engine) -> None:
    with Session(engine) as session:
        seed(session)
    got = scrape(collector(engine, fakeredis.FakeRedis(), max_daemons=1, max_pipelines=1))
    daemons = {dict(labels)["daemon"] for name, labels in got if name == "mycelial_daemon_status"}
    pipelines = {dict(labels)["pipeline"] for name, labels in got if name == "mycelial_pipeline_runs"}
    assert daemons == {"edge-a"} and pipelines == {"orders"}
    assert got[("mycelial_metrics_series_dropped", (("kind", "daemon"),))] == 2
    assert got[("mycelial_metrics_series_dropped", (("kind", "pipeline"),))] == 1


def test_alerts_are_counted_by_state(engine: Engine) -> None:
    with Session(engine) as session:
        for n, state in enumerate([AlertState.FIRING, AlertState.FIRING, AlertState.PENDING]):
            session.add(
                Alert(rule="edge-offline", subject=f"daemon:edge-{n}", subject_kind="daemon", state=state)
            )
        session.commit()
    got = scrape(collector(engine, fakeredis.FakeRedis()))
    assert got[("mycelial_alerts", (("state", "firing"),))] == 2
    assert got[("mycelial_alerts", (("state", "pending"),))] == 1


def test_a_broker_that_is_down_leaves_the_sql_metrics_and_says_so(engine: Engine) -> None:
    with Session(engine) as session:
        seed(session)

    class Down:
        def pipeline(self, **_: Any) -> Any:
            raise ConnectionError("broker away")

    got = scrape(collector(engine, Down()))
    assert got[("mycelial_metrics_source_up", (("source", "broker"),))] == 0
    assert got[("mycelial_daemon_status", (("daemon", "edge-a"), ("status", "online")))] == 1
