"""``mycelial events``: what happened to daemons and runs, oldest first, filtered."""

from __future__ import annotations

from typing import Annotated

import typer

from cp.cli.output import EXIT_BAD_INPUT, CliError, print_json, print_table
from cp.cli.runs import control_plane, printable, shown_time
from cp.cli.time_options import parse_window
from cp.event_log import KNOWN_KINDS, MAX_EVENTS, EventFilter, event_rows, unknown_kinds
from cp.models import utcnow
from cp.run_detail import find_run

MAX_KINDS = 32
MAX_KIND_CHARS = 64
EVENT_COLUMNS = [
    ("AT", lambda e: shown_time(e["at"])),
    ("KIND", lambda e: e["kind"]),
    ("DAEMON", lambda e: e["daemon"]),
    ("RUN", lambda e: f"{e['run_key']} #{e['attempt']}" if e["run_key"] else None),
    ("CHANGE", lambda e: f"{e['from'] or '-'} -> {e['to']}" if e["to"] else None),
    ("REASON", lambda e: printable(e["reason"] or "")),
]


def events(
    daemon: Annotated[str | None, typer.Option(help="Only events of this daemon.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only state changes of this pipeline's runs.")] = None,
    run: Annotated[str | None, typer.Option(help="Only state changes of this run (key or id).")] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="Only events of this kind (repeatable or comma-separated): run, status, config_applied, "
            "config_failed, message_rejected, security, ..."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="From this time: an age (10m, 2h, 7d) or an ISO time.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this time: an age or an ISO time.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_EVENTS, help="Show the newest N.")] = 100,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Daemon status changes, config results, rejected messages, security events and run state
    changes, oldest first (the newest --limit of them)."""
    start, end = parse_window(since, until, now=utcnow())
    kinds = frozenset(k.strip() for text in kind or [] for k in text.split(",") if k.strip())
    if len(kinds) > MAX_KINDS or any(len(k) > MAX_KIND_CHARS for k in kinds):
        raise CliError(
            f"--kind: at most {MAX_KINDS} kinds of {MAX_KIND_CHARS} characters", code=EXIT_BAD_INPUT
        )
    with control_plane().session() as session:
        unknown = unknown_kinds(session, kinds)
        if unknown:
            raise CliError(
                f"--kind: no events of kind {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KINDS))})",
                code=EXIT_BAD_INPUT,
            )
        run_key = run
        if run is not None and run.isdigit():  # an id, when a run has it; else a key like any other
            found = find_run(session, run)
            run_key = found.run_key if found is not None else run
        wanted = EventFilter(
            daemon=daemon,
            pipeline=pipeline,
            run_key=run_key,
            kinds=kinds,
            since=start,
            until=end,
            limit=limit,
        )
        rows = event_rows(session, wanted)
    if json_:
        print_json({"events": rows})
        return
    print_table(rows, EVENT_COLUMNS, empty="no events")
