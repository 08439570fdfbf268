"""``mycelial``: the operator's command line (DESIGN section 9)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import select

from cp.celery_app import BrokerNotConfiguredError
from cp.cli import failures, flower_server, processes, security_commands
from cp.cli.alerts import alerts_app
from cp.cli.broker import broker_app
from cp.cli.events import events
from cp.cli.logs import logs as logs_command
from cp.cli.metrics import metrics
from cp.cli.output import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    CliError,
    error,
    info,
    print_json,
    print_table,
    warn,
)
from cp.cli.runs import run_json, runs_app
from cp.cli.status import METRIC_COLUMNS, status_cell, status_command
from cp.config.limits import ConfigLimits
from cp.config_file import ConfigError, load_config_file
from cp.config_store import apply_document, current_author, plan_diff
from cp.health import HealthLimits
from cp.models import Pipeline, Run, RunState, RunTrigger, utcnow
from cp.private_files import UnsafeHomeError, prepare_home, restrict_umask
from cp.runs import (
    RunNotCancellableError,
    UnknownPipelineError,
    create_run,
    get_pipeline,
    mark_unpublished,
    queue_run,
    request_cancel,
)
from cp.runtime import ControlPlane
from cp.settings import Settings, SettingsError, get_settings
from cp.views import config_history_rows, daemon_rows, pipeline_rows

app = typer.Typer(
    name="mycelial",
    help="Mycelial control plane: configure, schedule and watch edge daemons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # usage errors as plain lines, not boxes
)
config_app = typer.Typer(help="Configuration versions.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(broker_app, name="broker")
app.add_typer(runs_app, name="runs")
app.add_typer(alerts_app, name="alerts")
app.command("events")(events)
app.command("status")(status_command)
app.command("logs")(logs_command)
app.command("metrics")(metrics)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
LogLevel = Annotated[str, typer.Option("--loglevel", help="debug, info, warning or error.")]


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Mycelial control plane."""


def settings(*, long_running: bool = False) -> Settings:
    """This process's settings, with its home checked (``long_running``: and tightened inside)."""
    loaded = get_settings()
    prepare_home(loaded.home, deep=long_running)
    return loaded


# --- processes ---------------------------------------------------------------------------


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option("--demo", help="Create sample data and apply examples/demo.yaml.")
    ] = False,
) -> None:
    """Run everything on this machine: Redis (embedded unless configured), worker, beat, daemon, Flower."""
    from cp.cli.supervisor import run_stack

    raise typer.Exit(run_stack(settings(long_running=True), demo=demo))


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1)] = 4,
    pool: Annotated[str, typer.Option(help="Celery pool: threads, prefork or solo.")] = "threads",
    loglevel: LogLevel = "info",
) -> None:
    """Run a control-plane worker (queue mycelial.cp)."""
    processes.run_worker(settings(long_running=True), pool=pool, concurrency=concurrency, loglevel=loglevel)


@app.command()
def beat(loglevel: LogLevel = "info") -> None:
    """Run beat: static entries from beat_schedule.py and pipeline schedules from the database."""
    processes.run_beat(settings(long_running=True), loglevel=loglevel)


@app.command()
def flower(
    address: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Run Flower with basic auth on every URL (credentials in MYCELIAL_HOME/flower-credentials)."""
    s = settings(long_running=True)
    flower_server.run_flower(s, address=address or s.flower_address, port=port or s.flower_port)


@app.command()
def daemon(
    name: Annotated[str, typer.Option("--name", help="Daemon name; its queue is mycelial.daemon.NAME.")],
    labels: Annotated[str, typer.Option("--labels", help="key=value pairs, comma-separated.")] = "",
    concurrency: Annotated[int, typer.Option(min=1)] = 2,
    pool: Annotated[str, typer.Option(help="Celery pool: threads, prefork or solo.")] = "threads",
    loglevel: LogLevel = "info",
    enroll_token: Annotated[
        str | None,
        typer.Option(
            "--enroll-token",
            envvar="MYCELIAL_ENROLL_TOKEN",
            help="The token `mycelial daemons enroll NAME` printed (first start only; the environment "
            "variable keeps it out of the process list).",
            show_envvar=False,
        ),
    ] = None,
    enroll_token_file: Annotated[
        Path | None,
        typer.Option(
            "--enroll-token-file",
            envvar="MYCELIAL_ENROLL_TOKEN_FILE",
            help="A file holding that token instead.",
            show_envvar=False,
        ),
    ] = None,
    allow_root: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-root",
            help="A folder file connectors may use besides the daemon's data folder (repeatable).",
        ),
    ] = None,
) -> None:
    """Run a daemon: a Celery worker consuming only its own queue."""
    if enroll_token is None and enroll_token_file is not None:
        enroll_token = processes.read_token_file(enroll_token_file)
    processes.run_daemon(
        settings(long_running=True),
        name=name,
        labels=processes.parse_labels(labels),
        pool=pool,
        concurrency=concurrency,
        loglevel=loglevel,
        enroll_token=enroll_token,
        allow_roots=allow_root or (),
    )


# --- configuration -----------------------------------------------------------------------

FileOption = Annotated[Path, typer.Option("-f", "--file", help="Configuration file (YAML).")]
AllowEmptyOption = Annotated[
    bool,
    typer.Option(
        "--allow-empty",
        help="Accept a file that declares nothing, which removes every daemon, connector and pipeline.",
    ),
]


def _load(file: Path, *, allow_empty: bool) -> dict[str, Any]:
    """The validated document in ``file``, within the configured size limits."""
    return load_config_file(file, limits=ConfigLimits.from_settings(settings()), allow_empty=allow_empty)


@app.command()
def apply(
    file: FileOption,
    comment: Annotated[str, typer.Option("-m", "--comment", help="Why this change.")] = "",
    allow_empty: AllowEmptyOption = False,
) -> None:
    """Validate FILE, show the diff, store a new config version and push it to affected daemons."""
    document = _load(file, allow_empty=allow_empty)
    cp = ControlPlane(settings())
    _ = cp.app  # a missing broker setting is an error before anything is stored
    with cp.session() as session:
        result = apply_document(
            session,
            document,
            author=current_author(),
            comment=comment,
            source=str(file),
            now=utcnow(),
        )
    if not result.changed:
        info(f"no changes: configuration is already at version {result.version}")
        return
    for line in result.diff:
        info(line)
    info(f"stored config version {result.version}")
    try:
        cp.push_configs(result.pushes)
    except Exception as exc:
        warn(
            f"version {result.version} is stored but could not be pushed now ({failures.reason(exc)}); "
            "daemons get it when they reconnect"
        )
        return
    for push in result.pushes:
        info(f"pushed version {push.version} to daemon {push.daemon}")


@app.command()
def diff(file: FileOption, allow_empty: AllowEmptyOption = False) -> None:
    """Show what applying FILE would change. Exit 0: no changes, 1: changes."""
    document = _load(file, allow_empty=allow_empty)
    with ControlPlane(settings()).session() as session:
        lines = plan_diff(session, document)
    for line in lines:
        info(line)
    if not lines:
        info("no changes")
    raise typer.Exit(EXIT_FAILED if lines else EXIT_OK)


@config_app.command("history")
def config_history(json_: JsonOption = False, limit: int = 20) -> None:
    """List stored configuration versions, newest first."""
    with ControlPlane(settings()).session() as session:
        rows = config_history_rows(session, limit=limit)
    if json_:
        print_json({"versions": rows})
        return
    print_table(
        rows,
        [
            ("VERSION", lambda r: r["version"]),
            ("CREATED", lambda r: r["created_at"]),
            ("AUTHOR", lambda r: r["author"]),
            ("PIPELINES", lambda r: r["pipelines"]),
            ("COMMENT", lambda r: r["comment"]),
        ],
        empty="no configuration applied yet",
    )


# --- listings ----------------------------------------------------------------------------


daemons_app = typer.Typer(
    help="List daemons (no command), enrol them and revoke their keys.", invoke_without_command=True
)
app.add_typer(daemons_app, name="daemons")
keys_app = typer.Typer(help="The control plane's own signing key.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@daemons_app.command("enroll")
def daemons_enroll(
    name: Annotated[str, typer.Argument(help="The daemon's name.")],
    expires: Annotated[
        float | None, typer.Option("--expires", help="Seconds the token stays usable (default 3600).")
    ] = None,
) -> None:
    """Print a single-use token; start the daemon once with it (MYCELIAL_ENROLL_TOKEN)."""
    token = security_commands.enroll(settings(), name=name, ttl=expires)
    print(token)


@daemons_app.command("revoke")
def daemons_revoke(name: Annotated[str, typer.Argument(help="The daemon's name.")]) -> None:
    """Refuse the daemon's messages from now on (every worker, within a second, no restart)."""
    info(security_commands.revoke(settings(), name=name))


@keys_app.command("show")
def keys_show(json_: JsonOption = False) -> None:
    """The control plane's current (and previous) public key."""
    shown = security_commands.show_keys(settings())
    if json_:
        print_json(shown)
        return
    for role, key in shown.items():
        if key:
            print(f"{role}: {key['key_id']} {key['public_key']}")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; daemons are told to trust old and new until retire-previous."""
    info(security_commands.rotate(settings()))


@keys_app.command("retire-previous")
def keys_retire_previous() -> None:
    """Stop trusting the key before the last rotation, here and on every daemon."""
    info(security_commands.retire_previous(settings()))


@daemons_app.callback()
def daemons(ctx: typer.Context, json_: JsonOption = False) -> None:
    """List daemons with status, heartbeat age and desired/applied config versions."""
    if ctx.invoked_subcommand is not None:
        return
    s = settings()
    with ControlPlane(s).session() as session:
        rows = daemon_rows(
            session, now=utcnow(), limits=HealthLimits.from_settings(s), stale_after=s.checker_stale_after
        )
    if json_:
        print_json({"daemons": rows})
        return
    print_table(
        rows,
        [
            ("NAME", lambda r: r["name"]),
            ("STATUS", status_cell),
            ("SINCE", lambda r: (r["status_since"] or "")[:19]),
            (
                "HEARTBEAT",
                lambda r: (
                    f"{r['last_heartbeat_age_s']:.0f}s ago"
                    if r["last_heartbeat_age_s"] is not None
                    else "never"
                ),
            ),
            ("LABELS", lambda r: ",".join(f"{k}={v}" for k, v in r["labels"].items())),
            (
                "PROBE",
                lambda r: f"{r['last_probe_rtt_ms']:.0f}ms" if r["last_probe_rtt_ms"] is not None else "-",
            ),
            ("QUEUE", lambda r: r["queue_depth"]),
            ("RUNNING", lambda r: r["running_runs"]),
            *METRIC_COLUMNS,
            ("DESIRED", lambda r: r["desired_config_version"]),
            ("APPLIED", lambda r: r["applied_config_version"]),
            ("KEY", lambda r: r["key"]),
        ],
        empty="no daemons yet: enrol one with `mycelial daemons enroll NAME`, then start it",
    )


@app.command()
def pipelines(json_: JsonOption = False) -> None:
    """List pipelines with schedule, placement and their last run."""
    with ControlPlane(settings()).session() as session:
        rows = pipeline_rows(session)
    if json_:
        print_json({"pipelines": rows})
        return
    print_table(
        rows,
        [
            ("NAME", lambda r: r["name"]),
            ("SOURCE", lambda r: f"{r['source']}:{r['source_table'] or 'query'}"),
            ("DESTINATION", lambda r: f"{r['destination']}:{r['destination_table']}"),
            ("MODE", lambda r: r["mode"]),
            (
                "SCHEDULE",
                lambda r: f"{r['schedule']} ({r['timezone']})" if r["schedule"] else "manual",
            ),
            ("ON", lambda r: r["placement"].get("daemon") or r["placement"].get("labels")),
            ("ENABLED", lambda r: ("paused" if r["paused"] else "yes") if r["enabled"] else "no"),
            ("LAST RUN", lambda r: r["last_run_state"]),
        ],
        empty="no pipelines yet: apply a configuration with `mycelial apply -f FILE`",
    )


@app.command("run")
def run_pipeline(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait for the run to finish; exit 0 on success, 1 on failure."),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait with --wait (exit 3 when exceeded).")
    ] = 3600.0,
    json_: JsonOption = False,
) -> None:
    """Start a run of PIPELINE now; it waits, with the reason shown, while the pipeline has no room
    under its overlap policy (the previous run is still active)."""
    cp = ControlPlane(settings())
    _ = cp.app  # a missing broker setting is an error before the run row exists
    with cp.session() as session:
        found = get_pipeline(session, pipeline)
        new = create_run(session, found, trigger=RunTrigger.MANUAL, now=utcnow())
        assert new is not None  # manual run keys are unique
    key = new.run_key
    # queued at once, unless the pipeline's overlap policy or placement makes it wait: then beat
    # queues it later (and so does this command while it waits for the run)
    run, queued = _queue_manual_run(cp, new.id)
    if not json_:
        info(f"run {key} queued on daemon {run.daemon}" if queued else f"run {key} {run.error}")
    if not wait:
        if json_:
            print_json(run_json(cp, run))
        return
    deadline = time.monotonic() + timeout
    while not (run.state.finished or time.monotonic() > deadline):
        time.sleep(0.2)
        run, queued = _queue_manual_run(cp, new.id)
        if queued and not json_:
            info(f"run {key} queued on daemon {run.daemon}")
    shown = run_json(cp, run)
    if json_:
        print_json(shown)
    if not run.state.finished:
        raise CliError(f"run {key} still {run.state} after {timeout:.0f}s", code=EXIT_TIMEOUT)
    if run.state is RunState.SUCCEEDED:
        if not json_:
            info(f"run {key} succeeded: {shown['rows_written']} rows written")
        return
    if not json_:
        error(f"run {key} {run.state}: {run.error or 'no error recorded'}")
    raise typer.Exit(EXIT_FAILED)


def _queue_manual_run(cp: ControlPlane, run_id: int | None) -> tuple[Run, bool]:
    """The manual run as it is now, and whether this call queued it (and published its job).

    Only a run never queued yet is queued here; a retry waits for its backoff, which beat keeps.
    False while the run must still wait, with the reason in its ``error``.
    """
    with cp.session() as session:
        run = session.get(Run, run_id)
        assert run is not None  # runs are never deleted while they are not finished
        message = None
        if run.state is RunState.SCHEDULED and run.attempt == 1:
            pipeline = session.exec(select(Pipeline).where(Pipeline.name == run.pipeline)).first()
            if pipeline is not None:  # removed from the configuration: beat cancels the run
                message = queue_run(session, run, pipeline, now=utcnow(), expires=cp.settings.run_job_expires)
    if message is None:
        return run, False
    try:
        cp.publish_jobs([message])
    except Exception as exc:
        with cp.session() as session:
            why = failures.reason(exc)
            mark_unpublished(session, run.run_key, error=f"could not publish the job: {why}", now=utcnow())
        raise CliError(f"run {run.run_key} failed: could not publish the job ({why})") from None
    return run, True


@app.command()
def pause(pipeline: Annotated[str, typer.Argument(help="Pipeline name.")]) -> None:
    """Stop firing PIPELINE's schedule (runs in progress go on); survives config applies."""
    with ControlPlane(settings()).session() as session:
        found = get_pipeline(session, pipeline)
        found.paused = True
        session.add(found)
    info(f"pipeline {pipeline} paused: its schedule does not fire until `mycelial resume {pipeline}`")


@app.command()
def resume(pipeline: Annotated[str, typer.Argument(help="Pipeline name.")]) -> None:
    """Fire PIPELINE's schedule again, from now on (the fires missed while paused are not run)."""
    with ControlPlane(settings()).session() as session:
        found = get_pipeline(session, pipeline)
        found.paused = False
        found.schedule_since = utcnow()
        session.add(found)
    info(f"pipeline {pipeline} resumed")


@app.command()
def cancel(run_key: Annotated[str, typer.Argument(help="The run key, as `mycelial runs` shows it.")]) -> None:
    """Cancel a run: a queued run never starts; a running one stops between batches."""
    cp = ControlPlane(settings())
    _ = cp.app
    with cp.session() as session:
        run = request_cancel(session, run_key, now=utcnow())
    # a broadcast, so it reaches the daemon even while its queue is busy with this very job
    cp.app.control.revoke(run.task_id or run.run_key)
    if run.state is RunState.CANCELLED:
        info(f"run {run.run_key} cancelled before it started")
    else:
        info(f"run {run.run_key} asked to stop; it ends `cancelled` after its current batch")


# --- entry point -------------------------------------------------------------------------

BAD_INPUT_ERRORS = (
    SettingsError,
    UnsafeHomeError,
    UnknownPipelineError,
    RunNotCancellableError,
    BrokerNotConfiguredError,
)


def run() -> None:
    """Console-script entry: one-line errors on stderr and exit codes scripts can trust."""
    debug = "--debug" in sys.argv
    restrict_umask()  # what this process and its libraries create is its user's only (docs/security.md)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()  # standalone: typer reports usage errors itself (exit 2) and exits through SystemExit
        code = EXIT_OK
    except ConfigError as exc:
        for problem in exc.problems:
            error(problem)
        code = EXIT_BAD_INPUT
    except CliError as exc:
        error(str(exc))
        code = exc.code
    except BAD_INPUT_ERRORS as exc:
        if debug:
            raise
        error(str(exc))
        code = EXIT_BAD_INPUT
    except Exception as exc:
        if debug:
            raise
        error(failures.describe(exc))
        code = EXIT_FAILED
    sys.exit(code)
