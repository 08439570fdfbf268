"""Metrics: one scrape of ``/metrics`` over 1,000 declared daemon queues, some with messages.

The database (PostgreSQL at ``MYCELIAL_BENCH_POSTGRES_URL`` in a schema of its own, else SQLite in
a temporary file) declares 1,000 daemons (half of them heard from within the last second, half
silent: dead daemons whose queues nobody consumes), 200 pipelines and 20,000 finished runs
(``--quick``: 2,000). One daemon in ten has 10 signed messages of about 2 KiB waiting on its
queue, spread over the priority lists. The served endpoint (``cp/metrics``, in this process, on
a free port of 127.0.0.1) is scraped with a plain HTTP client; the scrape reported is the median
of five after one warm-up.

- ``scrape``: milliseconds for one scrape, against the 1 s target (a ratio below 1 meets it);
- ``scrape vs raw reads``: the same scrape against the SQL and Redis reads alone (the collector's
  queries and its one Redis round trip, without building, encoding and serving the text), measured
  in the same run: the cost of everything else.
"""

from __future__ import annotations

import base64
import json
import os
import random
import statistics
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from bench.harness import Result, broker, progress
from cp.celery_app import make_celery
from cp.db import create_schema, make_engine
from cp.messaging.broker_client import broker_client
from cp.metrics.collector import ControlPlaneCollector, read_broker
from cp.metrics.process import collector_limits
from cp.metrics.queues import queue_keys
from cp.metrics.readings import read_sql
from cp.metrics.server import MetricsAuth, serve
from cp.models import Daemon, Pipeline, Run, RunState, RunTrigger, utcnow
from cp.settings import Settings, normalize_database_url

TARGET_S = 1.0
DAEMONS = 1_000
PIPELINES = 200
SCRAPES = 5


@contextmanager
def database() -> Iterator[str]:
    url = os.environ.get("MYCELIAL_BENCH_POSTGRES_URL")
    if not url:
        with tempfile.TemporaryDirectory(prefix="mycm") as home:
            progress("database: SQLite (set MYCELIAL_BENCH_POSTGRES_URL for PostgreSQL)")
            yield f"sqlite:///{Path(home) / 'cp.db'}"
        return
    import psycopg

    schema = f"mycelial_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    progress(f"database: PostgreSQL, schema {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def seed(session: Session, *, prefix: str, runs: int) -> list[str]:
    now = utcnow()
    rng = random.Random(7)
    names = [f"{prefix}-{i:04d}" for i in range(DAEMONS)]
    session.connection().execute(
        insert(Daemon),
        [
            {
                "name": n,
                "declared": True,
                "labels": {},
                "running_progress": [],
                "status": "online",
                "last_heartbeat_at": now if i % 2 == 0 else now - timedelta(hours=1),
                "running_runs": 0,
                "cpu_percent": 12.5,
                "memory_mb": 80.0,
                "last_probe_rtt_ms": 4.0,
                "desired_config_version": 2,
                "applied_config_version": 2,
            }
            for i, n in enumerate(names)
        ],
    )
    pipelines = [f"{prefix}-p{i:03d}" for i in range(PIPELINES)]
    session.connection().execute(
        insert(Pipeline),
        [
            {
                "name": p,
                "source_connector": "s",
                "destination_connector": "d",
                "destination_table": p,
                "key_columns": [],
                "labels": {},
                "config_version": 1,
            }
            for p in pipelines
        ],
    )
    rows = []
    for i in range(runs):
        fired = now - timedelta(seconds=rng.uniform(60, 86_400))
        started = fired + timedelta(seconds=rng.uniform(0.01, 3))
        rows.append(
            {
                "run_key": f"{prefix}-r{i}",
                "pipeline": pipelines[i % PIPELINES],
                "trigger": RunTrigger.SCHEDULE,
                "scheduled_for": fired,
                "created_at": fired,
                "started_at": started,
                "finished_at": started + timedelta(seconds=rng.expovariate(1 / 30)),
                "state": RunState.SUCCEEDED if i % 10 else RunState.FAILED,
                "rows_written": 100,
            }
        )
    for start in range(0, len(rows), 5_000):
        session.connection().execute(insert(Run), rows[start : start + 5_000])
    session.commit()
    return names


def signed_message(at_ms: int) -> bytes:
    """A message shaped as kombu's Redis transport stores a signed job (body ~2 KiB)."""
    return json.dumps(
        {
            "body": base64.b64encode(os.urandom(1_500)).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "task": "daemon.run_job",
                "id": str(uuid.uuid4()),
                "mycelial_auth": {
                    "v": 1,
                    "by": "cp",
                    "key": "0" * 16,
                    "at": at_ms,
                    "exp": at_ms + 3_600_000,
                    "nonce": uuid.uuid4().hex,
                    "sig": "x" * 86,
                },
            },
            "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64", "priority": 0},
        }
    ).encode()


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def median_of(work: Callable[[], object]) -> float:
    work()  # warm-up: connections, statement caches
    return statistics.median(timed(work) for _ in range(SCRAPES))


def run(*, quick: bool) -> list[Result]:
    runs = 2_000 if quick else 20_000
    prefix = f"bm{uuid.uuid4().hex[:4]}"
    with broker() as broker_url, database() as database_url:
        settings = Settings(home=Path(tempfile.mkdtemp(prefix="mycmh")), broker_url=broker_url)
        engine = make_engine(normalize_database_url(database_url))
        create_schema(engine)
        with Session(engine) as session:
            names = seed(session, prefix=prefix, runs=runs)
        progress(f"seeded {DAEMONS} daemons, {PIPELINES} pipelines, {runs} finished runs")
        app = make_celery(settings)
        opened = broker_client(app)
        assert opened is not None, "the benchmark needs a Redis broker"
        connection, client = opened
        keys = [key for name in names for key in queue_keys(name)]
        try:
            now_ms = int(time.time() * 1000)
            pipe = client.pipeline(transaction=False)
            for i, name in enumerate(names[::10]):
                for j in range(10):
                    pipe.lpush(queue_keys(name)[j % 4], signed_message(now_ms - (i * 10 + j) * 1000))
            pipe.execute()
            progress(f"queued 10 messages on each of {DAEMONS // 10} daemon queues")

            @contextmanager
            def session_scope() -> Iterator[Session]:
                with Session(engine) as s:
                    yield s

            @contextmanager
            def redis() -> Iterator[Any]:
                yield client

            limits = collector_limits(settings)
            collector = ControlPlaneCollector(
                session=session_scope, broker=redis, limits=limits, clock=utcnow
            )
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            registry.register(collector)
            server = serve(registry, address="127.0.0.1", port=0, auth=MetricsAuth())
            url = f"http://127.0.0.1:{server.server_port}/metrics"

            def scrape() -> None:
                with urllib.request.urlopen(url, timeout=30) as response:
                    text = response.read()
                assert f'mycelial_daemon_queue_depth{{daemon="{names[0]}"}} 10.0'.encode() in text

            def raw_reads() -> None:
                with session_scope() as s:
                    sql = read_sql(
                        s,
                        now=utcnow(),
                        limits=limits.health,
                        stale_after=limits.stale_after,
                        max_daemons=limits.max_daemons,
                        max_pipelines=limits.max_pipelines,
                    )
                read_broker(client, [r.daemon.name for r in sql.daemons], peek_bytes=limits.peek_bytes)

            try:
                scrape_s = median_of(scrape)
                raw_s = median_of(raw_reads)
            finally:
                server.shutdown()
                server.server_close()
            progress(f"scrape {scrape_s * 1000:.0f} ms (raw SQL + Redis reads {raw_s * 1000:.0f} ms)")
        finally:
            for start in range(0, len(keys), 1_000):
                client.delete(*keys[start : start + 1_000])
            connection.release()
            engine.dispose()
    return [
        Result("scrape of 1,000 daemon queues", scrape_s * 1000, "ms", TARGET_S * 1000),
        Result("scrape vs raw SQL + Redis reads", scrape_s * 1000, "ms", raw_s * 1000),
    ]
