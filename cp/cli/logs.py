"""``mycelial logs``: the daemons' log records, filtered, followed, or warnings and errors grouped."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from sqlmodel import Session

from cp.cli.output import EXIT_BAD_INPUT, CliError, print_json, print_table
from cp.cli.time_options import parse_time
from cp.logs.query import (
    LogFilter,
    UnknownLevelError,
    after,
    error_groups,
    last_id,
    levels_from,
    newest,
    record_row,
)
from cp.models import LogRecord, utcnow
from cp.private_files import prepare_home
from cp.runtime import ControlPlane
from cp.settings import get_settings

FOLLOW_POLL_SECONDS = 0.5
# PostgreSQL hands out ids before commit, so a lower id can appear after a higher one: follow
# looks this many ids back each time and skips those it printed
FOLLOW_LOOKBACK_IDS = 2_000
ERRORS_DEFAULT_SINCE = "24h"
ERRORS_SCAN_LIMIT = 200_000


def logs(
    daemon: Annotated[str | None, typer.Option("--daemon", help="Only this daemon's records.")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="Only this pipeline's records.")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only this run's records (its run key).")] = None,
    level: Annotated[
        str | None, typer.Option("--level", help="This level and above: debug, info, warning, error.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="From: a duration back (30s, 10m, 2h, 7d) or an ISO time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Before: a duration back or an ISO time.")
    ] = None,
    text: Annotated[
        str | None, typer.Option("--grep", "--text", help="Only messages containing this (any case).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many (the newest).")] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then print new records as they come.")
    ] = False,
    errors: Annotated[
        bool,
        typer.Option("--errors", help="Warnings and errors grouped by message shape (default --since 24h)."),
    ] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="One JSON object a line (--errors: one JSON document).")
    ] = False,
) -> None:
    """Daemon log records, oldest first; --follow keeps printing new ones."""
    if errors and follow:
        raise CliError("--errors and --follow cannot be combined", code=EXIT_BAD_INPUT)
    now = utcnow()
    where = LogFilter(
        daemon=daemon,
        pipeline=pipeline,
        run_key=run,
        levels=_levels(level if level is not None else ("warning" if errors else None)),
        since=_time(
            "--since", since if since is not None else (ERRORS_DEFAULT_SINCE if errors else None), now
        ),
        until=_time("--until", until, now),
        text=text,
    )
    settings = get_settings()
    prepare_home(settings.home, deep=False)
    cp = ControlPlane(settings)
    if errors:
        _print_errors(cp, where, json_=json_)
        return
    with cp.session() as session:
        records = [record_row(r) for r in newest(session, where, limit=limit)]
        cursor = max([last_id(session)] + [r["id"] for r in records]) if follow else 0
        # what is already there counts as printed, down to the lookback
        seen = {r.id for r in _window(session, where, cursor)} if follow else set()
    for row in records:
        _print_record(row, json_=json_)
    if not follow:
        if not records and not json_:
            sys.stderr.write("no log records match\n")
        return
    _follow(cp, where, cursor=cursor, seen=seen, json_=json_)


def _window(session: Session, where: LogFilter, cursor: int) -> list[LogRecord]:
    return after(
        session, where, after_id=max(0, cursor - FOLLOW_LOOKBACK_IDS), limit=FOLLOW_LOOKBACK_IDS + 10_000
    )


def _follow(cp: ControlPlane, where: LogFilter, *, cursor: int, seen: set[int | None], json_: bool) -> None:
    try:
        while True:
            time.sleep(FOLLOW_POLL_SECONDS)
            with cp.session() as session:
                rows = _window(session, where, cursor)
            for record in rows:
                if record.id not in seen:
                    seen.add(record.id)
                    _print_record(record_row(record), json_=json_)
            cursor = max([cursor] + [r.id or 0 for r in rows])
            seen = {i for i in seen if i is not None and i > cursor - FOLLOW_LOOKBACK_IDS}
    except KeyboardInterrupt:
        return


def _print_record(row: dict[str, Any], *, json_: bool) -> None:
    if json_:
        line = json.dumps(row, separators=(",", ":"), default=str)
    else:
        job = f" [{row['pipeline']} {row['run_key']} #{row['attempt']}]" if row["run_key"] else ""
        line = f"{row['ts'][:23]} {row['daemon']} {row['level']:<8} {row['logger']}{job}: {row['message']}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _print_errors(cp: ControlPlane, where: LogFilter, *, json_: bool) -> None:
    with cp.session() as session:
        groups, truncated = error_groups(session, where, scan_limit=ERRORS_SCAN_LIMIT)
    rows = [g.as_dict() for g in groups]
    if json_:
        print_json({"since": where.since, "until": where.until, "groups": rows, "truncated": truncated})
        return
    if truncated:
        sys.stderr.write(
            f"note: more than {ERRORS_SCAN_LIMIT} records matched; only the newest are grouped\n"
        )
    print_table(
        rows,
        [
            ("COUNT", lambda r: r["count"]),
            ("LEVEL", lambda r: r["level"]),
            ("FIRST", lambda r: (r["first_seen"] or "")[:19]),
            ("LAST", lambda r: (r["last_seen"] or "")[:19]),
            ("DAEMONS", lambda r: ",".join(r["daemons"])),
            ("PIPELINES", lambda r: ",".join(r["pipelines"])),
            ("LOGGER", lambda r: r["logger"]),
            ("SHAPE", lambda r: r["shape"]),
            ("EXAMPLE", lambda r: r["example"].split("\n", 1)[0][:200]),
        ],
        empty="no warnings or errors in that window",
    )


def _levels(level: str | None) -> list[str] | None:
    if level is None:
        return None
    try:
        return levels_from(level)
    except UnknownLevelError as exc:
        raise CliError(f"--level: {exc}", code=EXIT_BAD_INPUT) from None


def _time(option: str, text: str | None, now: datetime) -> datetime | None:
    return None if text is None else parse_time(option, text, now=now)
