"""Alerts: one evaluation of every rule kind over 1,000 daemons and 2,000 pipelines on PostgreSQL.

The database holds 1,000 declared daemons (one in ten offline, one in ten with a backlog, one in
twenty drifting from its desired config) and 2,000 pipelines with ten finished runs each (one in
ten failing for ever, one in ten stale) and a running run for one in twenty. Seven rules, one per
kind, select everything. The benchmark times

- ``first``: the first evaluation, which creates some 900 alerts, their history and notices;
- ``steady``: the worst of five evaluations after it, where nothing changes (every 2 s in life).

Each is reported against the 1 s target as its baseline (a ratio below 1 meets it); ``--quick``
runs the steady evaluation twice. PostgreSQL: ``MYCELIAL_BENCH_POSTGRES_URL``, else
``MYCELIAL_TEST_POSTGRES_URL``, else postgresql://127.0.0.1:5432/test; a throw-away schema is
created and dropped.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from bench.harness import Result, progress
from cp.alerts.evaluator import evaluate_alerts
from cp.alerts.rules import AlertsDecl
from cp.db import create_schema, make_engine, session_scope
from cp.health import HealthLimits
from cp.models import Daemon, DaemonStatus, Pipeline, Run, RunState, RunTrigger
from cp.settings import normalize_database_url

TARGET_S = 1.0
DAEMONS = 1_000
PIPELINES = 2_000
RUNS_PER_PIPELINE = 10
POSTGRES_ENV_VARS = ("MYCELIAL_BENCH_POSTGRES_URL", "MYCELIAL_TEST_POSTGRES_URL")
DEFAULT_POSTGRES_URL = "postgresql://127.0.0.1:5432/test"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = HealthLimits(offline_after=15, probe_timeout=5, backlog_threshold=100)
RULES = AlertsDecl.model_validate(
    {
        "settings": {"group_wait": "0s"},
        "rules": [
            {"name": "offline", "kind": "daemon_offline", "notify": ["ops"]},
            {"name": "degraded", "kind": "daemon_degraded", "notify": ["ops"]},
            {"name": "backlog", "kind": "queue_backlog", "threshold": {"depth": 1000}, "notify": ["ops"]},
            {"name": "drift", "kind": "config_drift", "threshold": {"longer_than": "0s"}, "notify": ["ops"]},
            {"name": "failing", "kind": "run_failures", "threshold": {"count": 3}, "notify": ["ops"]},
            {"name": "slow", "kind": "run_duration", "threshold": {"longer_than": "10m"}, "notify": ["ops"]},
            {"name": "stale", "kind": "freshness", "threshold": {"within": "1h"}, "notify": ["ops"]},
        ],
    }
)


def postgres_url() -> str:
    for var in POSTGRES_ENV_VARS:
        if os.environ.get(var):
            progress(f"postgres: from {var}")
            return os.environ[var]
    progress(f"postgres: {DEFAULT_POSTGRES_URL}")
    return DEFAULT_POSTGRES_URL


def populate(engine: Any) -> None:
    daemons = [
        {
            "name": f"edge-{i:04d}",
            "labels": {"site": f"site-{i % 10}"},
            "declared": True,
            "status": DaemonStatus.ONLINE,
            "last_heartbeat_at": NOW - timedelta(seconds=60 if i % 10 == 0 else 1),
            "queue_depth": 5_000 if i % 10 == 1 else 3,
            "running_runs": 0,
            "running_progress": [],
            "desired_config_version": 2,
            "applied_config_version": 1 if i % 20 == 2 else 2,
        }
        for i in range(DAEMONS)
    ]
    pipelines = [
        {
            "name": f"pipe-{i:04d}",
            "source_connector": "src",
            "destination_connector": "dst",
            "destination_table": f"t{i}",
            "key_columns": [],
            "labels": {},
            "daemon": f"edge-{i % DAEMONS:04d}",
            "schedule_since": NOW - timedelta(days=1),
            "config_version": 2,
        }
        for i in range(PIPELINES)
    ]
    runs = []
    for i in range(PIPELINES):
        age = timedelta(hours=3) if i % 10 == 5 else timedelta(minutes=1)
        for n in range(RUNS_PER_PIPELINE):
            failed = i % 10 == 3
            finished = NOW - age - timedelta(minutes=10 * n)
            runs.append(_run(f"pipe-{i:04d}", n, RunState.FAILED if failed else RunState.SUCCEEDED, finished))
        if i % 20 == 7:
            runs.append(_run(f"pipe-{i:04d}", RUNS_PER_PIPELINE, RunState.RUNNING, None))
    with engine.begin() as conn:
        conn.execute(insert(Daemon), daemons)
        conn.execute(insert(Pipeline), pipelines)
        for start in range(0, len(runs), 5_000):
            conn.execute(insert(Run), runs[start : start + 5_000])


def _run(pipeline: str, n: int, state: RunState, finished: datetime | None) -> dict[str, Any]:
    started = (finished or NOW - timedelta(minutes=30)) - timedelta(seconds=30)
    return {
        "run_key": f"{pipeline}-{n}",
        "pipeline": pipeline,
        "trigger": RunTrigger.SCHEDULE,
        "daemon": "edge-0000",
        "state": state,
        "attempt": 1,
        "deliveries": 1,
        "created_at": started,
        "started_at": started,
        "finished_at": finished,
        "rows_read": 0,
        "rows_written": 0,
        "error_retryable": False,
    }


def timed_evaluation(engine: Any, now: datetime) -> tuple[float, int, int]:
    start = time.perf_counter()
    with session_scope(engine) as session:
        outcome = evaluate_alerts(session, now=now, limits=LIMITS, alerts=RULES)
    return time.perf_counter() - start, len(outcome.transitions), outcome.notices


def run(*, quick: bool) -> list[Result]:
    import psycopg

    server = postgres_url()
    schema = f"mycelial_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    engine = make_engine(normalize_database_url(f"{server}?options=-csearch_path%3D{schema}"))
    try:
        create_schema(engine)
        progress(f"populating {DAEMONS} daemons, {PIPELINES} pipelines, {PIPELINES * RUNS_PER_PIPELINE} runs")
        populate(engine)
        first, transitions, notices = timed_evaluation(engine, NOW)
        progress(f"first evaluation: {first * 1000:.0f} ms, {transitions} transitions, {notices} notices")
        steady = []
        for i in range(2 if quick else 5):
            took, transitions, notices = timed_evaluation(engine, NOW + timedelta(seconds=1 + i))
            steady.append(took)
            progress(f"steady evaluation: {took * 1000:.0f} ms, {transitions} transitions, {notices} notices")
    finally:
        engine.dispose()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return [
        Result(case="first evaluation", value=first * 1000, unit="ms", baseline=TARGET_S * 1000),
        Result(
            case="steady evaluation (worst)", value=max(steady) * 1000, unit="ms", baseline=TARGET_S * 1000
        ),
    ]
