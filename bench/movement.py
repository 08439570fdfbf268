"""Movement: rows/s through the daemon's job path, against a hand-written fast path and dlt.

Four pairs — ``sqlite->postgres``, ``postgres->sqlite``, ``postgres->postgres`` and
``csv->postgres`` — each move the same N rows (N = 1,000,000; ``--quick`` 100,000) of 8
mixed-type columns. Every path runs in a child process of its own (``python -m bench.movement``,
the task on stdin), which reports the seconds its work took (imports done before the clock starts)
and its own peak RSS (``VmHWM``). For each pair:

- **mycelial**: ``workers.jobs.execute`` with a ``RunJob`` payload built from the control plane's
  own models (``cp.protocol``: ``PipelineSpec``, ``RunJob``, ``dump``, as ``run_job_message`` does)
  and parsed back with ``cp.protocol.parse``, as the daemon's ``daemon.run_job`` task does (mode
  ``replace``, ``batch_size`` 10,000). Its peak RSS is the daemon's peak memory.
- **fast path**: what one would write by hand for the pair: a plain cursor read in ``fetchmany``
  batches of 10,000, then psycopg ``COPY ... FROM STDIN`` with ``write_row`` into PostgreSQL (binary
  for PostgreSQL's typed values, text for SQLite's and the CSV's), or ``executemany`` in one
  transaction into SQLite.
- **dlt**: a dlt pipeline with its ``sql_database`` source (default backend: ``sqlalchemy``), or
  ``filesystem`` + ``read_csv`` for the CSV file, into dlt's ``postgres`` destination, or its
  ``sqlalchemy`` destination for the SQLite file (``write_disposition="replace"``).

After every run the destination's row count is checked against the source's; a mismatch stops
the benchmark. Destinations are dropped (and a CHECKPOINT taken) between runs. In the full run
the mycelial and fast paths run three times each, alternating, and the fastest run counts; dlt
runs once. A last case runs the mycelial path for ``sqlite->postgres`` at a tenth of N and
compares its peak memory with the run at N.

PostgreSQL: ``MYCELIAL_BENCH_POSTGRES_URL``, else ``MYCELIAL_TEST_POSTGRES_URL``, else
``postgresql://postgres@127.0.0.1:5432/test``. Everything is created in a schema
``mycelial_bench_<random>`` (and ``..._dlt`` for dlt's dataset), dropped at the end. Files go to
a temporary folder, removed at the end.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.harness import Result, progress, redact

ROWS = 1_000_000
ROWS_QUICK = 100_000
BATCH_SIZE = 10_000
REPEAT = 3  # mycelial and fast-path runs per pair in the full run (best kept); dlt runs once
REPEAT_QUICK = 1

POSTGRES_ENV_VARS = ("MYCELIAL_BENCH_POSTGRES_URL", "MYCELIAL_TEST_POSTGRES_URL")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DSN_VAR = "MYCELIAL_BENCH_DSN"  # the connectors' dsn is ${env:MYCELIAL_BENCH_DSN}, resolved by the daemon
CHILD_TIMEOUT = 1800  # seconds for one child run

#: what the fast path and dlt import, and the packages that bring them
BASELINE_MODULES = ("psycopg", "dlt", "sqlalchemy", "psycopg2", "pandas")
BASELINE_PACKAGES = ("'psycopg[binary]'", "'dlt[postgres,sql_database,filesystem,sqlalchemy]'", "pandas")

ROOT = Path(__file__).resolve().parents[1]

SOURCE_TABLE = "orders"
SMALL_TABLE = "orders_small"  # the first tenth of the rows: the memory-scaling case's small run
DEST_TABLE = "dest"
CSV_FILE = "orders.csv"
SOURCE_DB = "source.db"
DEST_DB = "dest.db"  # in a folder of its own, emptied between runs

PAIRS = ("sqlite->postgres", "postgres->sqlite", "postgres->postgres", "csv->postgres")

COLUMNS = ("id", "customer", "amount", "quantity", "ratio", "active", "created_at", "note")
#: the CSV connector's ``columns`` option: the logical types the file holds
CSV_TYPES = {
    "id": "bigint",
    "customer": "text",
    "amount": "decimal(12,2)",
    "quantity": "integer",
    "ratio": "float",
    "active": "boolean",
    "created_at": "timestamptz",
    "note": "text",
}
PG_SOURCE_DDL = (
    "id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL, quantity integer NOT NULL,"
    " ratio double precision NOT NULL, active boolean NOT NULL, created_at timestamptz NOT NULL, note text"
)
# declared so that both mycelial's SQLite connector and SQLAlchemy (dlt) read the intended types
SQLITE_SOURCE_DDL = (
    "id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount NUMERIC(12,2) NOT NULL, quantity INT NOT NULL,"
    " ratio DOUBLE NOT NULL, active BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL, note TEXT"
)
# the fast path's destination tables: the column types the mycelial sinks create for the same source
PG_DEST_DDL = {
    "sqlite": "id bigint, customer text, amount numeric(12,2), quantity integer, ratio double precision,"
    " active boolean, created_at timestamp, note text",
    "postgres": "id bigint, customer text, amount numeric(12,2), quantity integer, ratio double precision,"
    " active boolean, created_at timestamptz, note text",
    "csv": "id bigint, customer text, amount numeric(12,2), quantity integer, ratio double precision,"
    " active boolean, created_at timestamptz, note text",
}
PG_COPY_TYPES = ["int8", "text", "numeric", "int4", "float8", "bool", "timestamptz", "text"]
SQLITE_DEST_DDL = (
    '"id" BIGINT, "customer" TEXT, "amount" DECIMAL TEXT(12,2), "quantity" INTEGER, "ratio" DOUBLE,'
    ' "active" BOOLEAN, "created_at" TIMESTAMPTZ, "note" TEXT'
)

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
NOTE_TEXT = (
    "Deliver to the side entrance; call ahead if the gate is closed. Fragile items packed separately,"
    " invoice by e-mail, keep the receipt. Thanks!"
)


# --- data ----------------------------------------------------------------------------------


def generate(count: int, start: int = 1) -> Iterator[tuple[Any, ...]]:
    """Rows ``start`` .. ``start + count - 1``, the same on every run (no randomness)."""
    for i in range(start, start + count):
        yield (
            i,
            f"customer-{(i * 7919) % 50_000:05d}",
            Decimal((i * 104_729) % 10_000_000).scaleb(-2),
            (i * 31) % 1_000,
            ((i * 2_654_435_761) % 1_000_003) / 1_000_003,
            i % 3 != 0,
            EPOCH + timedelta(seconds=i * 37),
            None if i % 17 == 0 else NOTE_TEXT[: 1 + (i * 13) % len(NOTE_TEXT)],
        )


def postgres_url() -> str:
    for var in POSTGRES_ENV_VARS:
        url = os.environ.get(var)
        if url:
            progress(f"postgres: {redact(url)} (from {var})")
            return url
    progress(f"postgres: {DEFAULT_POSTGRES_URL}")
    return DEFAULT_POSTGRES_URL


def sqlalchemy_url(url: str) -> str:
    """A libpq URL as SQLAlchemy's psycopg2 URL (dlt's own PostgreSQL driver)."""
    scheme, rest = url.split("://", 1)
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URL, got {scheme}://")
    return f"postgresql+psycopg2://{rest}"


@dataclass
class World:
    """Where the sources live and where every destination goes."""

    url: str
    work: Path  # the daemon's home: the source files, the SQLite destination folder, dlt's folders
    schema: str  # the PostgreSQL schema of the source and the destination tables
    rows: int
    small: int

    @property
    def dlt_dataset(self) -> str:
        return f"{self.schema}_dlt"

    @property
    def dest_dir(self) -> Path:
        return self.work / "dest"


def create_sources(url: str, work: Path, schema: str, rows: int, small: int) -> None:
    """The same rows as a SQLite table, a PostgreSQL table and a CSV file (plus the small SQLite table)."""
    import psycopg

    started = time.perf_counter()
    names = ", ".join(COLUMNS)
    marks = ", ".join("?" for _ in COLUMNS)
    with (
        closing(sqlite3.connect(work / SOURCE_DB, isolation_level=None)) as lite,
        psycopg.connect(url, autocommit=True) as pg,
        (work / CSV_FILE).open("w", newline="", encoding="utf-8") as handle,
    ):
        lite.execute("BEGIN")
        lite.execute(f"CREATE TABLE {SOURCE_TABLE} ({SQLITE_SOURCE_DDL})")
        lite.execute(f"CREATE TABLE {SMALL_TABLE} ({SQLITE_SOURCE_DDL})")
        pg.execute(f'CREATE TABLE "{schema}".{SOURCE_TABLE} ({PG_SOURCE_DDL})')
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        with (
            pg.transaction(),
            pg.cursor() as cursor,
            cursor.copy(f'COPY "{schema}".{SOURCE_TABLE} ({names}) FROM STDIN') as copy,
        ):
            done = 0
            while done < rows:
                chunk = list(generate(min(BATCH_SIZE, rows - done), start=done + 1))
                for row in chunk:
                    copy.write_row(row)
                # SQLite keeps naive UTC text, the form SQLAlchemy's SQLite dialect reads and writes
                lite_rows = [
                    (*r[:2], str(r[2]), *r[3:6], str(r[6].replace(tzinfo=None)), r[7]) for r in chunk
                ]
                lite.executemany(f"INSERT INTO {SOURCE_TABLE} ({names}) VALUES ({marks})", lite_rows)
                if done < small:
                    lite.executemany(
                        f"INSERT INTO {SMALL_TABLE} ({names}) VALUES ({marks})", lite_rows[: small - done]
                    )
                writer.writerows(
                    (
                        r[0],
                        r[1],
                        str(r[2]),
                        r[3],
                        repr(r[4]),
                        "true" if r[5] else "false",
                        r[6].isoformat(),
                        r[7],
                    )
                    for r in chunk
                )
                done += len(chunk)
        lite.execute("COMMIT")
        # as a table in use would be: statistics, hint bits and visibility map set, so no reader pays for them
        pg.execute(f'VACUUM (ANALYZE) "{schema}".{SOURCE_TABLE}')
    size = (work / CSV_FILE).stat().st_size / 1e6
    progress(
        f"  sources: {rows:,} rows as SQLite, PostgreSQL and CSV ({size:.0f} MB)"
        f" in {time.perf_counter() - started:.1f}s"
    )


def connector(kind: str, schema: str, *, role: str, work: Path) -> dict[str, Any]:
    """A connector as the control plane sends it: absolute paths in the work folder (the daemon's
    allowed root here), the dsn a reference."""
    if kind == "sqlite":
        path = work / (SOURCE_DB if role == "source" else f"dest/{DEST_DB}")
        return {"name": f"bench-sqlite-{role}", "kind": "sqlite", "options": {"path": str(path)}}
    if kind == "csv":
        options = {"path": str(work / CSV_FILE), "columns": CSV_TYPES}
        return {"name": "bench-csv", "kind": "csv", "options": options}
    options = {"dsn": f"${{env:{DSN_VAR}}}", "schema": schema}
    return {"name": "bench-postgres", "kind": "postgres", "options": options}


def job_payload(pair: str, schema: str, *, work: Path, table: str = SOURCE_TABLE) -> dict[str, Any]:
    """A ``daemon.run_job`` payload for ``pair``, built from the same models as the control plane's."""
    from cp.protocol import ConnectorSpec, PipelineSpec, RunJob, dump

    source, dest = pair.split("->")
    name = "bench-" + pair.replace("->", "-to-") + ("-small" if table == SMALL_TABLE else "")
    spec = PipelineSpec(
        name=name,
        source=ConnectorSpec(**connector(source, schema, role="source", work=work)),
        source_table=table,
        destination=ConnectorSpec(**connector(dest, schema, role="dest", work=work)),
        destination_table=DEST_TABLE,
        mode="replace",
        batch_size=BATCH_SIZE,
    )
    return dump(RunJob(run_key=f"{name}@manual-{uuid.uuid4().hex[:12]}", attempt=1, pipeline=spec))


@contextmanager
def world(*, rows: int, small: int) -> Iterator[World]:
    """Sources created once, in a temporary folder and a dedicated PostgreSQL schema; all removed after."""
    import psycopg

    url = postgres_url()
    schema = f"mycelial_bench_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="mycb") as tmp, psycopg.connect(url, autocommit=True) as pg:
        work = Path(tmp)
        (work / "dest").mkdir()
        pg.execute(f'CREATE SCHEMA "{schema}"')
        try:
            create_sources(url, work, schema, rows, small)
            yield World(url=url, work=work, schema=schema, rows=rows, small=small)
        finally:
            pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            pg.execute(f'DROP SCHEMA IF EXISTS "{schema}_dlt" CASCADE')
            pg.execute(f'DROP SCHEMA IF EXISTS "{schema}_dlt_staging" CASCADE')


# --- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    rows_per_second: float
    peak_mb: float
    base_mb: float  # RSS once the imports were done, before the clock started


def run_child(world: World, task: dict[str, Any]) -> dict[str, Any]:
    """Run ``task`` in a fresh interpreter; its last stdout line is its JSON result."""
    env = {
        **os.environ,
        DSN_VAR: world.url,
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "DLT_DATA_DIR": str(world.work / "dlt-data"),
        "RUNTIME__LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.movement"],
        input=json.dumps(task),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{task['path']} {task['pair']}: child exited {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def count_rows(world: World, pair: str, path: str) -> int:
    """Rows in the destination the last run of ``path`` wrote."""
    dest = pair.split("->")[1]
    if dest == "sqlite":
        if path == "dlt":
            return sum(sqlite_count(f, SOURCE_TABLE) for f in world.dest_dir.glob("*.db"))
        return sqlite_count(world.dest_dir / DEST_DB, DEST_TABLE)
    import psycopg

    table = f'"{world.dlt_dataset}".{SOURCE_TABLE}' if path == "dlt" else f'"{world.schema}".{DEST_TABLE}'
    with psycopg.connect(world.url, autocommit=True) as pg:
        found = pg.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert found is not None
    return int(found[0])


def sqlite_count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [table]
        ).fetchone()
        return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] if exists else 0


def clean(world: World) -> None:
    """Drop every destination: the PostgreSQL tables, dlt's dataset and the SQLite destination files."""
    import psycopg

    with psycopg.connect(world.url, autocommit=True) as pg:
        pg.execute(f'DROP TABLE IF EXISTS "{world.schema}".{DEST_TABLE}')
        pg.execute(f'DROP SCHEMA IF EXISTS "{world.dlt_dataset}" CASCADE')
        pg.execute(f'DROP SCHEMA IF EXISTS "{world.dlt_dataset}_staging" CASCADE')
        try:  # the last run's dirty pages written out now, not by a checkpoint in the middle of the next
            pg.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass
    shutil.rmtree(world.dest_dir, ignore_errors=True)
    shutil.rmtree(world.work / "dlt-pipelines", ignore_errors=True)
    shutil.rmtree(world.work / "dlt-data", ignore_errors=True)
    world.dest_dir.mkdir()


def measure(world: World, pair: str, path: str, *, rows: int | None = None) -> Run:
    """One run of ``path`` for ``pair`` in a child process, its row count checked, its destination dropped."""
    rows = world.rows if rows is None else rows
    task: dict[str, Any] = {
        "path": path,
        "pair": pair,
        "rows": rows,
        "work": str(world.work),
        "url": world.url,
        "schema": world.schema,
        "dataset": world.dlt_dataset,
    }
    if path == "mycelial":
        table = SOURCE_TABLE if rows == world.rows else SMALL_TABLE
        task["payload"] = job_payload(pair, world.schema, work=world.work, table=table)
    clean(world)
    result = run_child(world, task)
    written = count_rows(world, pair, path)
    clean(world)
    if written != rows:
        raise RuntimeError(f"{path} {pair}: {written:,} rows in the destination, expected {rows:,}")
    run = Run(rows / result["seconds"], result["peak_kb"] / 1024, result["base_kb"] / 1024)
    progress(
        f"  {pair} {path}: {rows:,} rows in {result['seconds']:.2f}s = {run.rows_per_second:,.0f} rows/s,"
        f" peak {run.peak_mb:.0f} MB (after imports {run.base_mb:.0f} MB)"
    )
    return run


def best(runs: Sequence[Run]) -> Run:
    """The fastest run, with the highest peak memory of them all (memory is not a matter of luck)."""
    fastest = max(runs, key=lambda r: r.rows_per_second)
    return Run(fastest.rows_per_second, max(r.peak_mb for r in runs), max(r.base_mb for r in runs))


def run(*, quick: bool) -> list[Result]:
    return compare(ROWS_QUICK if quick else ROWS, repeat=REPEAT_QUICK if quick else REPEAT)


def compare(rows: int, *, repeat: int) -> list[Result]:
    """Every pair at ``rows`` rows, then the memory-scaling case at ``rows`` against a tenth of it."""
    missing = [name for name in BASELINE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"movement: the baselines need {', '.join(missing)}: pip install {' '.join(BASELINE_PACKAGES)}"
        )
    small = rows // 10
    progress(f"movement: {rows:,} rows of {len(COLUMNS)} columns, batch_size {BATCH_SIZE:,}, 4 pairs")
    results: list[Result] = []
    with world(rows=rows, small=small) as w:
        mycelial_runs: dict[str, Run] = {}
        for pair in PAIRS:
            fast_runs: list[Run] = []
            ours: list[Run] = []
            for _ in range(repeat):
                fast_runs.append(measure(w, pair, "fast"))
                ours.append(measure(w, pair, "mycelial"))
            theirs = measure(w, pair, "dlt")
            fast, mine = best(fast_runs), best(ours)
            mycelial_runs[pair] = mine
            results += [
                Result(f"{pair} vs fast path", mine.rows_per_second, "rows/s", fast.rows_per_second),
                Result(f"{pair} vs dlt", mine.rows_per_second, "rows/s", theirs.rows_per_second),
                Result(f"{pair} daemon peak memory", mine.peak_mb, "MB", fast.peak_mb),
            ]
        small_run = best([measure(w, "sqlite->postgres", "mycelial", rows=small) for _ in range(repeat)])
    large = mycelial_runs["sqlite->postgres"]
    case = f"daemon peak memory {count_label(rows)} vs {count_label(small)} rows"
    results.append(Result(case, large.peak_mb, "MB", small_run.peak_mb))
    return results


def count_label(rows: int) -> str:
    """1,000,000 -> 1M, 100,000 -> 100k."""
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    return f"{rows // 1_000}k" if rows % 1_000 == 0 else str(rows)


# --- the child: one path, one pair ---------------------------------------------------------


def child_main() -> None:
    task = json.load(sys.stdin)
    seconds = CHILD_PATHS[task["path"]](task)
    status = proc_status()
    print(json.dumps({"seconds": seconds, "peak_kb": status["VmHWM"], "base_kb": BASE_KB[0]}), flush=True)


BASE_KB = [0]  # RSS when the clock started


def proc_status() -> dict[str, int]:
    """The kB figures of /proc/self/status.

    ``VmHWM`` is this process's peak RSS since its ``exec``. ``ru_maxrss`` would not do: it keeps the
    peak of the image replaced by ``exec``, which for a vfork'ed child is the parent's.
    """
    found: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if value.strip().endswith(" kB"):
                found[name] = int(value.split()[0])
    return found


def start_clock() -> float:
    BASE_KB[0] = proc_status()["VmRSS"]
    return time.perf_counter()


def mycelial_child(task: dict[str, Any]) -> float:
    """What the daemon's ``daemon.run_job`` does with a job message, minus the Celery task around it."""
    from cp.protocol import RunJob, parse
    from workers.confinement.paths import PathGuard
    from workers.confinement.policy import Confinement
    from workers.jobs import Outcome, Report, execute
    from workers.movement.registry import CONNECTORS

    job = parse(RunJob, task["payload"])
    for kind in (job.pipeline.source.kind, job.pipeline.destination.kind):
        importlib.import_module(CONNECTORS[kind][0])  # the driver, as in a daemon that has run a job before
    events: list[Outcome] = []
    started = start_clock()
    work = Path(task["work"])
    confinement = Confinement(paths=PathGuard((work,)))  # the daemon's check, as in a real run
    outcome = execute(
        job, home=work, confinement=confinement, report=Report(events.append), should_stop=lambda: False
    )
    seconds = time.perf_counter() - started
    if outcome.state != "succeeded":
        raise SystemExit(f"mycelial run {outcome.state}: {outcome.error}")
    return seconds


def fast_child(task: dict[str, Any]) -> float:
    import psycopg

    source, dest = task["pair"].split("->")
    work, schema, url = Path(task["work"]), task["schema"], task["url"]
    names = ", ".join(COLUMNS)
    started = start_clock()
    if dest == "postgres":
        with psycopg.connect(url) as pg, pg.cursor() as out:
            out.execute(f'CREATE TABLE "{schema}".{DEST_TABLE} ({PG_DEST_DDL[source]})')
            # typed values from PostgreSQL go as they are (binary); SQLite's and the CSV's as text
            binary = source == "postgres"
            options = " (FORMAT BINARY)" if binary else ""
            with out.copy(f'COPY "{schema}".{DEST_TABLE} ({names}) FROM STDIN{options}') as copy:
                if binary:
                    copy.set_types(PG_COPY_TYPES)
                for rows in read_batches(source, work, url, schema):
                    for row in rows:
                        copy.write_row(row)
            # the connection's context commits the one transaction
    else:
        with closing(sqlite3.connect(work / "dest" / DEST_DB, isolation_level=None)) as lite:
            lite.execute("BEGIN")
            lite.execute(f"CREATE TABLE {DEST_TABLE} ({SQLITE_DEST_DDL})")
            insert = f"INSERT INTO {DEST_TABLE} ({names}) VALUES ({', '.join('?' for _ in COLUMNS)})"
            for rows in read_batches(source, work, url, schema):
                lite.executemany(insert, [(*r[:2], str(r[2]), *r[3:6], r[6].isoformat(), r[7]) for r in rows])
            lite.execute("COMMIT")
    return time.perf_counter() - started


def read_batches(source: str, work: Path, url: str, schema: str) -> Iterator[Sequence[Sequence[Any]]]:
    """The source's rows in ``fetchmany`` batches: a plain cursor, no conversions beyond the driver's."""
    if source == "sqlite":
        with closing(sqlite3.connect(work / SOURCE_DB)) as lite:
            cursor = lite.execute(f"SELECT {', '.join(COLUMNS)} FROM {SOURCE_TABLE}")
            while rows := cursor.fetchmany(BATCH_SIZE):
                yield rows
    elif source == "postgres":
        import psycopg

        with psycopg.connect(url) as pg, pg.cursor(name="bench_read") as cursor:
            cursor.itersize = BATCH_SIZE
            cursor.execute(f'SELECT {", ".join(COLUMNS)} FROM "{schema}".{SOURCE_TABLE}')
            while rows := cursor.fetchmany(BATCH_SIZE):
                yield rows
    else:
        with (work / CSV_FILE).open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader)  # the header
            while True:
                rows = [
                    [v if v else None for v in row] for _, row in zip(range(BATCH_SIZE), reader, strict=False)
                ]
                if not rows:
                    return
                yield rows


def with_password(url: str) -> str:
    """dlt's PostgreSQL credentials insist on a password: give a placeholder when the server trusts us."""
    parts = urlsplit(url)
    if parts.password is not None or parts.username is None:
        return url
    return parts._replace(netloc=parts.netloc.replace("@", ":unused@", 1)).geturl()


def dlt_child(task: dict[str, Any]) -> float:
    import dlt
    from dlt.sources.filesystem import filesystem, read_csv
    from dlt.sources.sql_database import sql_database

    source, dest = task["pair"].split("->")
    work, url = Path(task["work"]), task["url"]
    started = start_clock()
    if source == "csv":
        data: Any = (filesystem(bucket_url=work.as_uri(), file_glob=CSV_FILE) | read_csv()).with_name(
            SOURCE_TABLE
        )
    elif source == "sqlite":
        data = sql_database(credentials=f"sqlite:///{work / SOURCE_DB}", table_names=[SOURCE_TABLE])
    else:
        data = sql_database(
            credentials=sqlalchemy_url(url), schema=task["schema"], table_names=[SOURCE_TABLE]
        )
    if dest == "postgres":
        destination: Any = dlt.destinations.postgres(credentials=with_password(url))
    else:
        destination = dlt.destinations.sqlalchemy(credentials=f"sqlite:///{work / 'dest' / DEST_DB}")
    pipeline = dlt.pipeline(
        pipeline_name="bench_movement",
        destination=destination,
        dataset_name=task["dataset"],
        pipelines_dir=str(work / "dlt-pipelines"),
    )
    info = pipeline.run(data, write_disposition="replace")
    seconds = time.perf_counter() - started
    info.raise_on_failed_jobs()
    return seconds


CHILD_PATHS: dict[str, Callable[[dict[str, Any]], float]] = {
    "mycelial": mycelial_child,
    "fast": fast_child,
    "dlt": dlt_child,
}


if __name__ == "__main__":
    child_main()
