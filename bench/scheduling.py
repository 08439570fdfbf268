"""Scheduling: dispatch throughput of a scheduler tick, and the precision of real fires.

Cases:

- ``tick dispatch (N due runs over 200 daemons)``: 200 pipelines (one pinned to each of 200
  daemons) with a per-second schedule, catch-up ``all`` and overlap ``allow``, all N/200 fires
  behind: one scheduler tick fires and queues N runs (the database work of
  ``cp.scheduler.tick``), commits, publishes every job through the Celery app and records the
  publishes — exactly what beat does. Baseline: raw ``app.send_task`` of the same N job messages
  to the same queues, no database, in the same run (the better of a measurement before and one
  after). Target: ratio at least 0.7.
- ``fire-to-start lag p50`` / ``p99``: real processes (a control-plane worker, beat and one
  daemon, started through the CLI with default settings) run a per-second schedule for 60 fires
  (``--quick``: 15); the lag is the daemon's ``started`` time minus the fire time. Reported in
  milliseconds, against the 1,000 ms target as the baseline (ratio below 1 meets it).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, col, select

from bench.harness import Result, broker, progress
from cp.celery_app import make_celery
from cp.config_file import parse_config_text
from cp.config_store import apply_document
from cp.db import create_schema, make_engine, session_scope
from cp.dispatch import CeleryDispatcher, Outgoing
from cp.models import Pipeline, Run, RunState, utcnow
from cp.runs import mark_published
from cp.scheduler import TickSettings, tick
from cp.settings import Settings

DAEMONS = 200
RUNS, RUNS_QUICK = 10_000, 2_000
FIRES, FIRES_QUICK = 60, 15
LAG_TARGET_MS = 1000.0


def config_text(daemons: int, *, runs_per_pipeline: int) -> str:
    lines = ["daemons:"] + [f"  - name: d{i:03d}" for i in range(daemons)]
    lines += [
        "connectors:",
        "  - {name: src, kind: sqlite, path: /srv/bench/src.db}",
        "  - {name: dst, kind: sqlite, path: /srv/bench/dst.db}",
        "pipelines:",
    ]
    for i in range(daemons):
        lines += [
            f"  - name: p{i:03d}",
            "    source: {connector: src, table: items}",
            f"    destination: {{connector: dst, table: items_{i:03d}}}",
            f"    daemon: d{i:03d}",
            "    schedule: '* * * * * *'",
            "    catchup: all",
            f"    max_catchup: {runs_per_pipeline}",
            "    overlap: allow",
            f"    max_active_runs: {runs_per_pipeline}",
        ]
    return "\n".join(lines) + "\n"


def tick_throughput(url: str, *, runs: int) -> list[Result]:
    per_pipeline = runs // DAEMONS
    with tempfile.TemporaryDirectory(prefix="mycs") as home:
        settings = Settings(home=Path(home), broker_url=url)
        engine = make_engine(f"sqlite:///{home}/cp.db")
        create_schema(engine)
        app = make_celery(settings, url=url)
        dispatcher = CeleryDispatcher(app)
        queues = [f"mycelial.daemon.d{i:03d}" for i in range(DAEMONS)]
        client = app.connection_for_write().default_channel.client
        try:
            document = parse_config_text(config_text(DAEMONS, runs_per_pipeline=per_pipeline), source="bench")
            with session_scope(engine) as session:
                apply_document(session, document, author="bench", comment="", source="bench", now=utcnow())
            client.delete(*queues)

            def the_tick() -> list[Outgoing]:
                now = utcnow()
                with session_scope(engine) as session:
                    # every pipeline is `per_pipeline` fires behind
                    for pipeline in session.exec(select(Pipeline)):
                        pipeline.schedule_since = now - timedelta(seconds=per_pipeline + 0.5)
                        session.add(pipeline)
                started = time.perf_counter()
                with session_scope(engine) as session:
                    result = tick(session, now=now, settings=TickSettings(expires=3600), rng=random.Random(0))
                for message in result.messages:
                    dispatcher.send(message)
                with session_scope(engine) as session:
                    mark_published(session, [str(m.payload["run_key"]) for m in result.messages], now=now)
                the_tick.seconds = time.perf_counter() - started  # type: ignore[attr-defined]
                return result.messages

            def warm_up() -> None:
                # declare every daemon queue once, as a long-running beat has long done
                for queue in queues:
                    app.send_task("daemon.run_job", args=[{}], queue=queue)
                client.delete(*queues)

            def raw(messages: list[Outgoing]) -> float:
                client.delete(*queues)
                started = time.perf_counter()
                for m in messages:
                    app.send_task(m.task, args=[m.payload], queue=m.queue)
                return len(messages) / (time.perf_counter() - started)

            progress(f"tick: {runs} due runs over {DAEMONS} daemons")
            warm_up()
            before = raw(the_sample(runs))
            client.delete(*queues)
            messages = the_tick()
            if len(messages) != runs:
                raise RuntimeError(f"the tick queued {len(messages)} runs, expected {runs}")
            ours = runs / the_tick.seconds  # type: ignore[attr-defined]
            queued = sum(int(client.llen(q)) for q in queues)
            if queued != runs:
                raise RuntimeError(f"{queued} messages in the daemon queues, expected {runs}")
            baseline = max(before, raw(messages))
            progress(f"tick: {ours:,.0f} runs/s; raw send_task: {baseline:,.0f} msgs/s")
        finally:
            client.delete(*queues)
            engine.dispose()
    return [Result(f"tick dispatch ({runs} due runs over {DAEMONS} daemons)", ours, "runs/s", baseline)]


def the_sample(count: int) -> list[Outgoing]:
    """Job-sized messages for the first baseline measurement, before the tick has made real ones."""
    payload = {"v": 1, "run_key": "p000@2026-01-01T00:00:00Z", "attempt": 1, "pipeline": {"name": "p000"}}
    payload["pipeline"] = {  # the shape and size of a real pipeline spec
        "name": "p000",
        "source": {"name": "src", "kind": "sqlite", "options": {"path": "/srv/bench/src.db"}},
        "source_table": "items",
        "source_query": None,
        "destination": {"name": "dst", "kind": "sqlite", "options": {"path": "/srv/bench/dst.db"}},
        "destination_table": "items_000",
        "mode": "replace",
        "batch_size": 10000,
        "cursor_column": None,
        "key_columns": [],
        "schema_drift": "add",
    }
    return [
        Outgoing(
            task="daemon.run_job", queue=f"mycelial.daemon.d{i % DAEMONS:03d}", payload=payload, argsrepr=""
        )
        for i in range(count)
    ]


def fire_lag(url: str, *, fires: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="mycl") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
        # the pipeline's files sit in the home, beside the daemon's data folder: allow it as a root
        env.update(MYCELIAL_HOME=home, MYCELIAL_BROKER_URL=url, MYCELIAL_ALLOWED_ROOTS=home)
        database = f"sqlite:///{home}/mycelial.db"
        cli = [sys.executable, "-m", "cp.cli"]
        # the daemon is enrolled as an operator would (docs/security.md)
        enrolled = subprocess.run(
            [*cli, "daemons", "enroll", "lag"], env=env, check=True, capture_output=True
        )
        token = enrolled.stdout.decode().strip()
        procs = [
            subprocess.Popen(
                [*cli, name, *args], env=extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for name, args, extra in (
                ("worker", [], env),
                ("daemon", ["--name", "lag"], {**env, "MYCELIAL_ENROLL_TOKEN": token}),
            )
        ]
        try:
            import sqlite3

            with sqlite3.connect(f"{home}/src.db") as conn:
                conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
                conn.execute("INSERT INTO items VALUES (1)")
            config = Path(home) / "lag.yaml"
            config.write_text(
                "daemons: [{name: lag}]\nconnectors:\n"
                f"  - {{name: src, kind: sqlite, path: {home}/src.db}}\n"
                f"  - {{name: dst, kind: sqlite, path: {home}/dst.db}}\n"
                "pipelines:\n  - name: tick\n    source: {connector: src, table: items}\n"
                "    destination: {connector: dst, table: items}\n    daemon: lag\n"
                "    schedule: '* * * * * *'\n"
            )
            time.sleep(3)  # the daemon says hello
            subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)
            procs.append(
                subprocess.Popen(
                    [*cli, "beat"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
            engine = make_engine(database)
            progress(f"lag: waiting for {fires} fires of a per-second schedule")
            deadline = time.monotonic() + fires * 3 + 60
            lags: list[float] = []
            while time.monotonic() < deadline:
                with Session(engine) as session:
                    done = session.exec(
                        select(Run).where(
                            col(Run.started_at).is_not(None), col(Run.state) != RunState.SKIPPED
                        )
                    ).all()
                lags = [
                    (r.started_at - r.scheduled_for).total_seconds() * 1000
                    for r in done
                    if r.started_at and r.scheduled_for
                ]
                if len(lags) >= fires:
                    break
                time.sleep(1)
            engine.dispose()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    if len(lags) < fires:
        raise RuntimeError(f"only {len(lags)} fires started")
    lags = sorted(lags)[-fires:] if len(lags) > fires else sorted(lags)
    p50 = statistics.median(lags)
    p99 = lags[min(len(lags) - 1, int(round(0.99 * (len(lags) - 1))))]
    progress(f"lag over {len(lags)} fires: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    return [
        Result("fire-to-start lag p50", p50, "ms", LAG_TARGET_MS),
        Result("fire-to-start lag p99", p99, "ms", LAG_TARGET_MS),
    ]


def run(*, quick: bool) -> list[Result]:
    with broker() as url:
        results = tick_throughput(url, runs=RUNS_QUICK if quick else RUNS)
        results += fire_lag(url, fires=FIRES_QUICK if quick else FIRES)
    return results
