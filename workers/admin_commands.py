"""The daemon's own remote-control commands for admins, beside Celery's built-in ones:

    celery -A cp.admin inspect mycelial_config   -d daemon@NAME   applied config version, checksum
    celery -A cp.admin inspect mycelial_runs     -d daemon@NAME   running runs with rows so far
    celery -A cp.admin inspect mycelial_software -d daemon@NAME   versions, connector drivers
    celery -A cp.admin control mycelial_refresh_config -d daemon@NAME

Celery keeps one registry of commands per process (``Panel``). A daemon process registers them
and attaches itself to its app; ``cp.admin`` registers them too, so Celery's CLI knows their
names, but has no daemon to answer with. Control-plane workers never register them.

The remote-control channel is not signed: what the answers hold is in workers/admin_reports.py,
and the one control command only makes the daemon send a signed ``cp.config_request`` (at most
one per ten seconds), which the control plane answers with the daemon's current desired config.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.worker.control import Panel, control_command, inspect_command

from cp.models import utcnow
from cp.protocol import CP_CONFIG_REQUEST, ConfigRequest
from workers.admin_reports import RefreshLimit, config_report, runs_report, software_report

if TYPE_CHECKING:
    from workers.runtime import DaemonRuntime

log = logging.getLogger(__name__)

INSPECT_CONFIG = "mycelial_config"
INSPECT_RUNS = "mycelial_runs"
INSPECT_SOFTWARE = "mycelial_software"
CONTROL_REFRESH_CONFIG = "mycelial_refresh_config"


@dataclass
class _Attached:
    daemon: DaemonRuntime
    refresh: RefreshLimit = field(default_factory=RefreshLimit)
    clock: Callable[[], float] = time.monotonic


_attached: weakref.WeakKeyDictionary[Celery, _Attached] = weakref.WeakKeyDictionary()


def attach(app: Celery, daemon: DaemonRuntime, *, refresh: RefreshLimit | None = None) -> None:
    """Answer the commands for ``daemon`` in the worker that runs ``app`` (registering them)."""
    register_admin_commands()
    _attached[app] = _Attached(daemon, refresh=refresh or RefreshLimit())


def register_admin_commands() -> None:
    """Put the commands in this process's remote-control registry (again: no change)."""
    if CONTROL_REFRESH_CONFIG in Panel.data:
        return
    inspect_command(name=INSPECT_CONFIG, help="Mycelial: the applied config's version and checksum.")(
        _answer(lambda a: _config(a.daemon))
    )
    inspect_command(name=INSPECT_RUNS, help="Mycelial: runs running here, with rows so far.")(
        _answer(lambda a: runs_report(a.daemon.progress.snapshot(), now=utcnow()))
    )
    inspect_command(name=INSPECT_SOFTWARE, help="Mycelial: versions and connector drivers installed.")(
        _answer(lambda _a: software_report())
    )
    control_command(
        name=CONTROL_REFRESH_CONFIG,
        help="Mycelial: ask the control plane for this daemon's config again (once per 10 s).",
    )(_answer(_refresh_config))


def _answer(build: Callable[[_Attached], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def handler(state: Any, **_ignored: object) -> dict[str, Any]:  # arguments: none taken
        attached = _attached_to(getattr(state, "app", None))
        if attached is None:
            return {"error": "not a mycelial daemon"}
        try:
            return build(attached)
        except Exception as exc:  # an answer never takes the worker's remote control down
            log.exception("remote-control command failed")
            return {"error": f"failed: {type(exc).__name__}"}

    return handler


def _attached_to(app: object) -> _Attached | None:
    return _attached.get(app) if isinstance(app, Celery) else None


def _config(daemon: DaemonRuntime) -> dict[str, Any]:
    applied = daemon.state.load()
    try:
        applied_at = datetime.fromtimestamp(daemon.state.path.stat().st_mtime, tz=UTC)
    except OSError:
        applied_at = None
    return config_report(applied, applied_at=applied_at if applied else None)


def _refresh_config(attached: _Attached) -> dict[str, Any]:
    daemon = attached.daemon
    wait = attached.refresh.wait_left(now=attached.clock())
    if wait > 0:
        every = attached.refresh.every
        return {"error": f"asked less than {every:.0f}s ago; try again in {math.ceil(wait)}s"}
    applied = daemon.state.load()
    version = applied.version if applied else None
    log.info("an admin asked for the config again: asking the control plane (have version %s)", version)
    daemon.send(
        CP_CONFIG_REQUEST,
        ConfigRequest(name=daemon.name, applied_config_version=version),
        argsrepr=f"daemon={daemon.name} version={version}",
    )
    return {"ok": f"asked the control plane for the config of {daemon.name} (have version {version})"}
