"""``mycelial alerts``: list alerts, their history, and silence or unsilence them (docs/alerts.md)."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from cp.alerts.evaluator import configured_alerts
from cp.alerts.silences import add_silence, remove_silences
from cp.alerts.views import alert_rows, history_rows, known_matchers, silence_rows
from cp.cli.output import EXIT_BAD_INPUT, CliError, info, print_json, print_table
from cp.cli.runs import control_plane, printable
from cp.config_store import current_author
from cp.durations import DURATION_HELP, MAX_DURATION_S, parse_duration
from cp.models import AlertState, utcnow

alerts_app = typer.Typer(
    help="List alerts (no command), show their history, silence and unsilence them.",
    invoke_without_command=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
MATCHER = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
STATES = [s.value for s in AlertState]


def _mute(row: dict[str, object]) -> str:
    if row["silenced_until"]:
        return f"silenced until {str(row['silenced_until'])[:19]}"
    if row["inhibited_by"]:
        return f"inhibited ({row['inhibited_by']})"
    return ""


ALERT_COLUMNS = [
    ("RULE", lambda r: r["rule"]),
    ("SUBJECT", lambda r: r["subject"]),
    ("STATE", lambda r: r["state"]),
    ("SEVERITY", lambda r: r["severity"]),
    ("SINCE", lambda r: str(r["fired_at"] or r["active_since"] or "")[:19]),
    ("MUTED", _mute),
    ("SUMMARY", lambda r: printable(r["summary"])),
]
HISTORY_COLUMNS = [
    ("AT", lambda h: str(h["at"])[:19]),
    ("RULE", lambda h: h["rule"]),
    ("SUBJECT", lambda h: h["subject"]),
    ("CHANGE", lambda h: f"{h['from'] or '-'} -> {h['to']}"),
    ("SUMMARY", lambda h: printable(h["summary"])),
]


def _matcher(text: str) -> str:
    if not MATCHER.fullmatch(text):
        raise CliError(
            f"RULE-OR-SUBJECT: expected a rule name or a subject like daemon:edge-1, got {text[:64]!r}",
            code=EXIT_BAD_INPUT,
        )
    return text


@alerts_app.callback()
def alerts(
    ctx: typer.Context,
    json_: JsonOption = False,
    state: Annotated[
        str | None, typer.Option(help="Only alerts in this state: firing, pending or resolved.")
    ] = None,
    history: Annotated[
        bool, typer.Option("--history", help="Show the history of transitions instead.")
    ] = False,
) -> None:
    """List alerts, firing first, with whether each is inhibited or silenced."""
    if ctx.invoked_subcommand is not None:
        return
    if history:
        show_history(json_=json_, limit=50, of=None)
        return
    if state is not None and state not in STATES:
        raise CliError(
            f"--state: unknown state {state[:32]!r} (one of {', '.join(STATES)})", code=EXIT_BAD_INPUT
        )
    with control_plane().session() as session:
        rows = alert_rows(session, now=utcnow(), state=state)
        silences = silence_rows(session, now=utcnow())
    if json_:
        print_json({"alerts": rows, "silences": silences})
        return
    print_table(rows, ALERT_COLUMNS, empty="no alerts")


@alerts_app.command("history")
def history_command(
    of: Annotated[str | None, typer.Argument(help="Only this rule or subject.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    json_: JsonOption = False,
) -> None:
    """Alert state transitions, newest first."""
    show_history(json_=json_, limit=limit, of=_matcher(of) if of is not None else None)


def show_history(*, json_: bool, limit: int, of: str | None) -> None:
    with control_plane().session() as session:
        rows = history_rows(session, limit=limit, rule_or_subject=of)
    if json_:
        print_json({"history": rows})
        return
    print_table(rows, HISTORY_COLUMNS, empty="no alert history")


@alerts_app.command("silence")
def silence(
    matcher: Annotated[
        str, typer.Argument(metavar="RULE-OR-SUBJECT", help="A rule name or a subject (daemon:NAME).")
    ],
    for_: Annotated[str, typer.Option("--for", help="How long, like 30m, 2h, 1d.")],
    message: Annotated[str, typer.Option("-m", "--message", help="Why (shown with the alert).")],
) -> None:
    """Mute the alerts of a rule or a subject: they still change state, but send nothing."""
    matcher = _matcher(matcher)
    duration = parse_duration(for_)
    if duration is None or not 0 < duration <= MAX_DURATION_S:
        raise CliError(
            f"--for: expected {DURATION_HELP} (at most 366d), got {for_[:64]!r}", code=EXIT_BAD_INPUT
        )
    if not message.strip() or len(message) > 500:
        raise CliError("-m: give a reason of 1 to 500 characters", code=EXIT_BAD_INPUT)
    now = utcnow()
    with control_plane().session() as session:
        config = configured_alerts(session)
        if matcher not in {r.name for r in config.rules} and matcher not in known_matchers(session):
            if not matcher.startswith(("daemon:", "pipeline:")):
                raise CliError(
                    f"RULE-OR-SUBJECT: no rule or alert named {matcher!r} (see `mycelial alerts`)",
                    code=EXIT_BAD_INPUT,
                )
        added = add_silence(
            session, matcher, duration=duration, reason=message, author=current_author(), now=now
        )
        until = added.until
    info(f"silenced {matcher} until {until.isoformat(timespec='seconds')}")


@alerts_app.command("unsilence")
def unsilence(
    matcher: Annotated[str, typer.Argument(metavar="RULE-OR-SUBJECT", help="As given to `alerts silence`.")],
) -> None:
    """End the silences of a rule or subject."""
    matcher = _matcher(matcher)
    with control_plane().session() as session:
        ended = remove_silences(session, matcher, now=utcnow())
    if not ended:
        raise CliError(f"no active silence for {matcher!r}")
    info(f"unsilenced {matcher} ({ended} silence{'s' if ended > 1 else ''} ended)")
