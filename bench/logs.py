"""Log ingest: records per second through the real path against a hand-written bulk insert, and
the latency from a daemon's log call to ``mycelial logs --follow`` printing the record.

Real processes with default settings: one ``mycelial worker`` (threads pool, 4 threads) on a
fresh SQLite database. Two phases:

- ``ingest``: N records (200,000; ``--quick`` 50,000) as signed ``cp.logs`` batches of 1,000 from
  10 simulated daemons (keys registered as enrolment would), pushed onto ``mycelial.cp`` while the
  worker runs; the rate is N over the time from the first push to the last row in the table.
  Baseline, in the same run: the same rows written by hand into an empty copy of the table
  (same indexes and unique constraint) in another SQLite file, with ``sqlite3.executemany`` and one
  commit per 1,000 rows. Target: at least 0.5 of the baseline.
- ``latency``: a daemon's own log shipping (workers/logs/: the handler, the spool, the sender,
  signed by its key) in this process logs 20 records a second for 30 s (``--quick`` 10 s) while
  ``mycelial logs --follow --json`` runs; latency is from each record's log call (its ``ts``)
  to the moment the follower printed it. Target: p99 under 2 s.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from sqlmodel import Session, SQLModel

from bench.harness import Result, broker, progress
from bench.heartbeats import percentile
from bench.raw_messages import RawTaskMessages
from cp.celery_app import make_celery
from cp.db import make_engine
from cp.embedded_redis import redis_client
from cp.messaging.install import guard_of
from cp.models import DaemonKey, LogRecord, utcnow
from cp.protocol import CP_LOGS, CP_QUEUE, log_row
from cp.security.envelope import daemon_sender
from cp.security.keys import Identity
from cp.security.signer import Signer
from cp.settings import Settings, normalize_database_url
from workers.logs.shipping import LogShipping

DAEMONS = 10
BATCH = 1_000
LATENCY_TARGET_S = 2.0
LOG_RATE = 20  # records a second in the latency phase
COLUMNS = ("daemon", "seq", "ts", "level", "logger", "pipeline", "run_key", "attempt", "message")


def daemon_name(i: int) -> str:
    return f"logs-{i:02d}"


def record(seq: int, at: datetime) -> dict[str, Any]:
    return {
        "seq": seq,
        "ts": at.isoformat(),
        "level": "INFO" if seq % 10 else "WARNING",
        "logger": "workers.movement.engine",
        "pipeline": "orders",
        "run_key": f"orders@{seq // 5_000}",
        "attempt": 1,
        "message": f"progress: {seq * 37} rows read, {seq * 37} written (batch {seq % 977} of orders)",
    }


def batches(total: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """``total`` records, in batches of BATCH, spread over the daemons in turn."""
    start = datetime.now(UTC)
    made = []
    for n, first in enumerate(range(1, total + 1, BATCH)):
        seqs = range(first, min(first + BATCH, total + 1))
        made.append((daemon_name(n % DAEMONS), [record(s, start + timedelta(microseconds=s)) for s in seqs]))
    return made


def enrol(engine_url: str, names: list[str]) -> dict[str, Identity]:
    identities = {name: Identity.generate() for name in names}
    engine = make_engine(engine_url)
    with Session(engine) as session:
        for name, identity in identities.items():
            session.add(
                DaemonKey(
                    name=name, key_id=identity.key_id, public_key=identity.public_text, enrolled_at=utcnow()
                )
            )
        session.commit()
    engine.dispose()
    return identities


@contextmanager
def row_counter(engine_url: str) -> Iterator[Callable[[], int]]:
    """Counts the stored records over one connection that only reads. A Session per look, as
    before, opened an engine every time and on SQLite began with BEGIN IMMEDIATE (cp/db.py):
    the watcher took the write lock from the worker twenty times a second."""
    engine = make_engine(engine_url)
    conn = engine.raw_connection()  # SQLite: autocommit (cp/db.py), each SELECT reads the newest

    def count() -> int:
        cursor = conn.cursor()
        cursor.execute("SELECT count(*) FROM logrecord")
        (stored,) = cursor.fetchone()
        cursor.close()
        if engine.dialect.name != "sqlite":
            conn.commit()  # the next look sees a fresh snapshot
        return int(stored)

    try:
        yield count
    finally:
        conn.close()
        engine.dispose()


def hand_written_insert(engine_url: str, made: list[tuple[str, list[dict[str, Any]]]]) -> float:
    """Records/s of the driver's own executemany into an empty copy of the table (same indexes
    and unique constraint), one transaction per batch."""
    engine = make_engine(engine_url)
    SQLModel.metadata.create_all(engine, tables=[LogRecord.__table__])  # type: ignore[list-item]
    rows = [[(name, *(r[c] for c in COLUMNS[1:])) for r in records] for name, records in made]
    # the statement the control plane runs (cp/logs/ingest.py), without the conflict clause
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    sql = f"INSERT INTO logrecord ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))})"
    conn = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            conn.isolation_level = None
        cursor = conn.cursor()
        started = time.perf_counter()
        for batch in rows:
            if engine.dialect.name == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
                cursor.executemany(sql, batch)
                cursor.execute("COMMIT")
            else:
                cursor.executemany(sql, batch)
                conn.commit()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
        engine.dispose()
    return sum(len(b) for b in rows) / elapsed


@dataclass
class Database:
    """Where the control plane and the baseline write: SQLite files, or two PostgreSQL schemas."""

    kind: str
    cp_url: str  # as MYCELIAL_DATABASE_URL
    baseline_url: str
    schemas: tuple[str, ...] = ()
    server: str = ""

    @property
    def engine_url(self) -> str:
        return normalize_database_url(self.cp_url)

    def drop(self) -> None:
        if self.schemas:
            import psycopg

            with psycopg.connect(self.server, autocommit=True) as conn:
                for schema in self.schemas:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def database(home: Path) -> Database:
    server = os.environ.get("MYCELIAL_BENCH_POSTGRES_URL")
    if not server:
        return Database("sqlite", f"sqlite:///{home}/mycelial.db", f"sqlite:///{home}/baseline.db")
    import psycopg

    tag = uuid.uuid4().hex[:8]
    schemas = (f"mycelial_bench_{tag}", f"mycelial_bench_base_{tag}")
    with psycopg.connect(server, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"CREATE SCHEMA {schema}")

    def url(schema: str) -> str:
        return f"{server}{'&' if '?' in server else '?'}options=-csearch_path%3D{schema}"

    return Database("postgresql", url(schemas[0]), normalize_database_url(url(schemas[1])), schemas, server)


def ingest(url: str, client: redis.Redis, home: Path, engine_url: str, *, total: int) -> float:
    made = batches(total)
    identities = enrol(engine_url, [daemon_name(i) for i in range(DAEMONS)])
    messages = []
    for i in range(DAEMONS):
        name = daemon_name(i)
        app = make_celery(Settings(home=home), url=url, name=f"bench-{name}", daemon=name)
        guard_of(app).signer = Signer(lambda key=identities[name]: key, by=daemon_sender(name), window_s=300)
        raw = RawTaskMessages(app, client, task=CP_LOGS, queue=CP_QUEUE)
        messages += [
            (n, raw.build({"v": 1, "name": name, "rows": [log_row(r) for r in records], "dropped": 0}))
            for n, (who, records) in enumerate(made)
            if who == name
        ]
    messages.sort()
    with row_counter(engine_url) as count_rows:
        started = time.perf_counter()
        for first in range(0, len(messages), 20):
            client.lpush(CP_QUEUE, *(m for _, m in messages[first : first + 20]))
        while (stored := count_rows()) < total:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"only {stored} of {total} records stored after 600 s")
            time.sleep(0.05)
        return total / (time.perf_counter() - started)


@contextmanager
def follower(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cp.cli",
            "logs",
            "--follow",
            "--json",
            "--grep",
            "bench-latency",
            "--limit",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def latency(url: str, home: Path, engine_url: str, env: dict[str, str], *, seconds: float) -> list[float]:
    name = "logs-live"
    identity = enrol(engine_url, [name])[name]
    settings = Settings(home=home)
    app = make_celery(settings, url=url, name=f"bench-{name}", daemon=name)
    guard_of(app).signer = Signer(lambda: identity, by=daemon_sender(name), window_s=300)
    shipping = LogShipping(settings, app, name=name, directory=home / "daemons" / name / "logs")
    lags: list[float] = []
    count = int(seconds * LOG_RATE)
    with follower(env) as proc:
        assert proc.stdout is not None
        time.sleep(3)  # the follower has started and read what is there
        shipping.start()
        logger = logging.getLogger("bench.daemon")

        def log_steadily() -> None:
            started = time.monotonic()
            for i in range(count):
                logger.info("bench-latency record %d", i)
                time.sleep(max(0.0, started + (i + 1) / LOG_RATE - time.monotonic()))

        def read_followed() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:  # blocking reads: each line stamped as it arrives
                printed = time.time()
                lags.append(printed - datetime.fromisoformat(json.loads(line)["ts"]).timestamp())

        reader = threading.Thread(target=read_followed, daemon=True)
        reader.start()
        writer = threading.Thread(target=log_steadily, daemon=True)
        writer.start()
        writer.join()
        deadline = time.monotonic() + 30
        while len(lags) < count and time.monotonic() < deadline:
            time.sleep(0.1)
    shipping.close(timeout=5)
    if len(lags) < count:
        raise RuntimeError(f"only {len(lags)} of {count} records reached the follower")
    return lags


def run(*, quick: bool) -> list[Result]:
    total = 50_000 if quick else 200_000
    with broker() as url, tempfile.TemporaryDirectory(prefix="mycbl") as tmp:
        home = Path(tmp)
        os.chmod(home, 0o700)
        db = database(home)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
        env.update(
            MYCELIAL_HOME=str(home),
            MYCELIAL_BROKER_URL=url,
            MYCELIAL_DATABASE_URL=db.cp_url,
            PYTHONUNBUFFERED="1",
        )
        client = redis_client(url)
        client.delete(CP_QUEUE)
        try:
            progress(
                f"database: {db.kind}; baseline: {total} records by hand into an empty copy of the table"
            )
            made = batches(total)
            baselines = [hand_written_insert(db.baseline_url, made)]
            progress(f"baseline: {baselines[0]:,.0f} records/s")
            with (home / "worker.log").open("wb") as wlog:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "cp.cli", "worker"], env=env, stdout=wlog, stderr=subprocess.STDOUT
                )
                try:
                    time.sleep(5)  # the worker consumes
                    progress(f"ingest: {total} records in batches of {BATCH} from {DAEMONS} daemons")
                    ingested = ingest(url, client, home, db.engine_url, total=total)
                    progress(f"ingest: {ingested:,.0f} records/s")
                    seconds = 10.0 if quick else 30.0
                    progress(f"latency: {LOG_RATE} records/s for {seconds:.0f} s through a daemon's shipping")
                    lags = latency(url, home, db.engine_url, env, seconds=seconds)
                    progress(f"latency: p50 {percentile(lags, 50):.2f}s p99 {percentile(lags, 99):.2f}s")
                finally:
                    worker.terminate()
                    try:
                        worker.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        worker.kill()
            # again, into a fresh copy: the better of the two is the baseline (a conservative ratio)
            db2_url = db.baseline_url.replace("baseline.db", "baseline2.db") if db.kind == "sqlite" else None
            if db2_url is None:
                _truncate(db.baseline_url)
                db2_url = db.baseline_url
            baselines.append(hand_written_insert(db2_url, made))
            baseline = max(baselines)
            progress(f"baseline again: {baselines[1]:,.0f} records/s; ratio {ingested / baseline:.2f}")
        finally:
            client.delete(CP_QUEUE)
            db.drop()
    return [
        Result(f"ingest through cp.logs ({db.kind})", ingested, "records/s", baseline),
        Result("log call to --follow p50", 1000 * percentile(lags, 50), "ms", 1000 * LATENCY_TARGET_S),
        Result("log call to --follow p99", 1000 * percentile(lags, 99), "ms", 1000 * LATENCY_TARGET_S),
    ]


def _truncate(engine_url: str) -> None:
    engine = make_engine(engine_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE logrecord")
    engine.dispose()
