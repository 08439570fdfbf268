"""``mycelial runs`` (the listing) and ``mycelial runs show RUN`` (one run in detail)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import typer

from cp.cli.output import EXIT_BAD_INPUT, CliError, info, print_json, print_lines, print_table
from cp.models import Run, RunState
from cp.private_files import prepare_home
from cp.run_detail import DEFAULT_LOG_LINES, MAX_LOG_LINES, find_run, run_detail
from cp.runtime import ControlPlane
from cp.settings import get_settings
from cp.views import run_rows, run_view

runs_app = typer.Typer(
    help="List runs, newest first (no command), or show one in detail.", invoke_without_command=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def control_plane() -> ControlPlane:
    settings = get_settings()
    prepare_home(settings.home)
    return ControlPlane(settings)


def run_json(cp: ControlPlane, run: Run) -> dict[str, Any]:
    """What `mycelial run --json` prints: the run, its rows and times over all its attempts."""
    with cp.session() as session:
        return run_view(session, run)


RUN_COLUMNS = [
    ("RUN", lambda r: r["run_key"]),
    ("STATE", lambda r: r["state"]),
    ("DAEMON", lambda r: r["daemon"]),
    ("TRIGGER", lambda r: r["trigger"]),
    ("TRY", lambda r: r["attempt"]),
    ("CREATED", lambda r: (r["created_at"] or "")[:19]),
    ("ROWS", lambda r: r["rows_written"]),
    ("SECONDS", lambda r: r["duration_s"]),
    ("ERROR", lambda r: r["error"]),
]


@runs_app.callback()
def runs(
    ctx: typer.Context,
    json_: JsonOption = False,
    pipeline: Annotated[str | None, typer.Option(help="Only this pipeline.")] = None,
    state: Annotated[str | None, typer.Option(help="Only runs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
) -> None:
    """List runs, newest first; rows and seconds cover all of a run's attempts."""
    if ctx.invoked_subcommand is not None:
        return
    if state is not None and state not in {s.value for s in RunState}:
        raise CliError(
            f"--state: unknown state {state!r} (one of {', '.join(s.value for s in RunState)})",
            code=EXIT_BAD_INPUT,
        )
    with control_plane().session() as session:
        rows = run_rows(session, pipeline=pipeline, state=state, limit=limit)
    if json_:
        print_json({"runs": rows})
        return
    print_table(rows, RUN_COLUMNS, empty="no runs")


@runs_app.command("show")
def show(
    run: Annotated[str, typer.Argument(help="The run key, as `mycelial runs` shows it, or the run's id.")],
    logs: Annotated[
        int,
        typer.Option("--logs", min=0, max=MAX_LOG_LINES, help="Show the run's last N log lines (0: none)."),
    ] = DEFAULT_LOG_LINES,
    json_: JsonOption = False,
) -> None:
    """One run: its attempts (daemon, times, rows, error), its state changes and its log lines."""
    with control_plane().session() as session:
        found = find_run(session, run)
        if found is None:
            raise CliError(f"no run {run!r} (see `mycelial runs`)")
        detail = run_detail(session, found, last_log_lines=logs)
    if json_:
        print_json(detail)
        return
    print_detail(detail)


ATTEMPT_COLUMNS = [
    ("TRY", lambda a: a["attempt"]),
    ("DAEMON", lambda a: a["daemon"]),
    ("STATE", lambda a: a["state"]),
    ("QUEUED", lambda a: shown_time(a["queued_at"])),
    ("STARTED", lambda a: shown_time(a["started_at"])),
    ("FINISHED", lambda a: shown_time(a["finished_at"])),
    ("SECONDS", lambda a: a["duration_s"]),
    ("READ", lambda a: a["rows_read"]),
    ("WRITTEN", lambda a: a["rows_written"]),
    ("ERROR", lambda a: printable(a["error"]) if a["error"] else None),
]
CHANGE_COLUMNS = [
    ("AT", lambda c: shown_time(c["at"])),
    ("TRY", lambda c: c["attempt"]),
    ("STATE", lambda c: f"{c['from_state'] or '-'} -> {c['to_state']}"),
    ("DAEMON", lambda c: c["daemon"]),
    ("REASON", lambda c: printable(c["reason"])),
]


CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text from daemons, its control characters shown escaped: none reaches the terminal."""
    return CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", text).replace("\n", "\\n")


def shown_time(value: str | None) -> str | None:
    """An ISO time as ``2026-01-31 12:00:00.250`` (UTC, as stored)."""
    if not value:
        return None
    at = datetime.fromisoformat(value)
    return f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond // 1000:03d}"


def print_detail(detail: dict[str, Any]) -> None:
    run = detail["run"]
    info(f"run {run['run_key']}: {run['state']}  (pipeline {run['pipeline']}, {run['trigger']})")
    if run["error"]:
        info(f"error: {run['error']}")
    attempts = len(detail["attempts"])
    running = f", running {run['running_s']}s" if run["running_s"] is not None else ""
    info(
        f"created {shown_time(run['created_at'])}, started {shown_time(run['started_at']) or '-'}, "
        f"finished {shown_time(run['finished_at']) or '-'}, duration {run['duration_s'] or '-'}s{running}"
    )
    info(f"rows read {run['rows_read']}, written {run['rows_written']} over {attempts} attempt(s)")
    info("")
    info("attempts:")
    print_table(detail["attempts"], ATTEMPT_COLUMNS, empty="none: the run was never queued")
    info("")
    info("state changes:")
    print_table(detail["state_changes"], CHANGE_COLUMNS, empty="none recorded")
    info("")
    lines = detail["log_lines"]
    total = detail["log_lines_total"]
    info(f"log lines ({len(lines)} of {total}):" if len(lines) < total else f"log lines ({total}):")
    print_lines([printable(log_line(line)) for line in lines])


def log_line(line: dict[str, Any]) -> str:
    return f"{shown_time(line['ts'])} {line['daemon']} {line['level']} {line['logger']}: {line['message']}"
