"""`mycelial status` (the control plane at a glance, exit 1 when something is down) and the live
columns of `mycelial daemons`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import func, or_, text
from sqlmodel import Session, col, select

from cp.celery_app import make_celery
from cp.cli import failures
from cp.cli.output import EXIT_FAILED, print_json, print_lines
from cp.control_status import Reachable, summarise
from cp.health import HealthLimits
from cp.liveness import seen_rows
from cp.models import ACTIVE_RUN_STATES, Run, utcnow
from cp.private_files import prepare_home
from cp.runtime import ControlPlane
from cp.settings import get_settings
from cp.shown_status import ago, status_text
from cp.views import daemon_rows, health_check_ran_at

BROKER_TIMEOUT = 3.0  # seconds a ping of the broker may take
DATABASE_TIMEOUT = 5.0  # seconds connecting to the database and a trivial query may take
RUNS_WINDOW = timedelta(hours=1)
T = TypeVar("T")


def status_command(
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    fail_on_offline: Annotated[
        bool, typer.Option("--fail-on-offline", help="Exit 1 also when a declared daemon is offline.")
    ] = False,
) -> None:
    """The control plane: broker, database, workers, beat, health checks, daemons, last hour's runs.
    Exit 1 when the broker or database is unreachable, no worker or beat was seen lately, or
    health checks stopped (docs/health.md#mycelial-status)."""
    settings = get_settings()
    prepare_home(settings.home, deep=False)
    cp = ControlPlane(settings)
    now = utcnow()
    broker = _reach(lambda: _ping_broker(cp), timeout=BROKER_TIMEOUT)
    database = _reach(lambda: _ping_database(cp), timeout=DATABASE_TIMEOUT)
    processes = checker_ran_at = daemons = runs = None
    if database.ok:
        try:
            with cp.session() as session:
                processes = seen_rows(session)
                checker_ran_at = health_check_ran_at(session)
                daemons = daemon_rows(
                    session,
                    now=now,
                    limits=HealthLimits.from_settings(settings),
                    stale_after=settings.checker_stale_after,
                )
                runs = runs_by_state(session, since=now - RUNS_WINDOW)
        except Exception as exc:  # the database went away between the ping and the reading
            database = Reachable(False, error=failures.reason(exc))
            processes = checker_ran_at = daemons = runs = None
    doc = summarise(
        now=now,
        broker=broker,
        database=database,
        processes=processes,
        checker_ran_at=checker_ran_at,
        daemons=daemons,
        runs_last_hour=runs,
        seen_within=settings.seen_within,
        checker_stale_after=settings.checker_stale_after,
        fail_on_offline=fail_on_offline,
    )
    if json_:
        print_json(doc)
    else:
        print_lines(status_lines(doc))
    if not doc["ok"]:
        raise typer.Exit(EXIT_FAILED)


def runs_by_state(session: Session, *, since: Any) -> dict[str, int]:
    """Runs created or finished since ``since``, and those still active, counted by state."""
    query = (
        select(Run.state, func.count())
        .where(
            or_(
                col(Run.created_at) >= since,
                col(Run.finished_at) >= since,
                col(Run.state).in_(list(ACTIVE_RUN_STATES)),
            )
        )
        .group_by(Run.state)
    )
    return {str(state): int(count) for state, count in session.exec(query)}


def status_lines(doc: dict[str, Any]) -> list[str]:
    """The document for a person: one line per component, problems last."""
    lines = [f"control plane: {'ok' if doc['ok'] else 'DOWN'}"]
    lines.append(f"  broker      {_reach_text(doc['broker'])}")
    lines.append(f"  database    {_reach_text(doc['database'])}")
    if doc["workers"] is not None:
        lines.append(f"  workers     {_processes_text(doc['workers'])}")
        lines.append(f"  beat        {_processes_text(doc['beat'])}")
        check = doc["health_check"]
        ran = "never ran" if check["age_s"] is None else f"last ran {ago(check['age_s'])} ago"
        lines.append(f"  health      {ran}{' (stale)' if check['stale'] else ''}")
    if doc["daemons"] is not None:
        counts = ", ".join(f"{status} {n}" for status, n in doc["daemons"].items())
        lines.append(f"  daemons     {counts}")
    if doc["runs_last_hour"] is not None:
        runs = ", ".join(f"{state} {n}" for state, n in sorted(doc["runs_last_hour"].items())) or "none"
        lines.append(f"  runs (1h)   {runs}")
    lines.extend(f"problem: {problem}" for problem in doc["problems"])
    return lines


def _reach_text(check: dict[str, Any]) -> str:
    if check["reachable"]:
        return f"reachable ({check['latency_ms']:.0f} ms)"
    return f"UNREACHABLE: {check['error']}"


def _processes_text(entries: list[dict[str, Any]]) -> str:
    alive = [e for e in entries if e["alive"]]
    if alive:
        shown = ", ".join(f"{e['name']} ({ago(e['seen_age_s'])} ago)" for e in alive[:5])
        more = f" and {len(alive) - 5} more" if len(alive) > 5 else ""
        return f"{len(alive)} seen: {shown}{more}"
    if not entries:
        return "NONE seen ever"
    newest = min(entries, key=lambda e: e["seen_age_s"])
    stopped = ", stopped" if newest["stopped_at"] else ""
    return f"NONE seen lately (last {newest['name']} {ago(newest['seen_age_s'])} ago{stopped})"


def _ping_broker(cp: ControlPlane) -> None:
    connection = make_celery(cp.settings).connection_for_write()
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=int(BROKER_TIMEOUT))
        client = getattr(connection.default_channel, "client", None)
        if client is not None and hasattr(client, "ping"):
            client.ping()
    finally:
        connection.release()


def _ping_database(cp: ControlPlane) -> None:
    with cp.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _reach(check: Callable[[], None], *, timeout: float) -> Reachable:
    """Run ``check`` in a thread of its own, for at most ``timeout`` seconds."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            check()
            outcome.append(None)
        except BaseException as exc:  # reported, whatever it is
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=attempt, name="status-check", daemon=True)
    thread.start()
    thread.join(timeout)
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    if not outcome:
        return Reachable(False, error=f"no answer within {timeout:.0f}s")
    if outcome[0] is not None:
        return Reachable(False, error=failures.reason(outcome[0]))
    return Reachable(True, latency_ms=elapsed_ms)


# --- `mycelial daemons`: the live columns --------------------------------------------------


def status_cell(row: dict[str, Any]) -> str:
    return status_text(row["status"], stale=row["status_stale"], checker_age_s=row["checker_age_s"])


def _rows_per_second(row: dict[str, Any]) -> str:
    progress = row["progress"]
    if not progress:
        return ""
    return f"{sum(p['rows_per_second'] for p in progress):.0f}"


METRIC_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("ROWS/S", _rows_per_second),
    ("CPU", lambda r: f"{r['cpu_percent']:.0f}%" if r["cpu_percent"] is not None else ""),
    ("MEM", lambda r: f"{r['memory_mb']:.0f}MB" if r["memory_mb"] is not None else ""),
]
