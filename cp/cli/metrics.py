"""``mycelial metrics``: serve Prometheus metrics on /metrics (docs/metrics.md)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from cp.cli.output import EXIT_BAD_INPUT, CliError, info, warn
from cp.metrics.server import AuthFileError
from cp.private_files import prepare_home
from cp.settings import get_settings


def metrics(
    address: Annotated[str | None, typer.Option(help="Listen address (MYCELIAL_METRICS_ADDRESS).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Listen port (MYCELIAL_METRICS_PORT).")
    ] = None,
) -> None:
    """Serve Prometheus metrics of daemons, queues, pipelines and the control plane on /metrics."""
    from cp.metrics.process import is_loopback, metrics_auth, start_metrics

    settings = get_settings()
    prepare_home(settings.home, deep=True)
    address = settings.metrics_address if address is None else address
    port = settings.metrics_port if port is None else port
    try:
        auth = metrics_auth(settings)
    except AuthFileError as exc:
        raise CliError(str(exc), code=EXIT_BAD_INPUT) from None
    if not is_loopback(address) and not auth.required:
        raise CliError(
            f"metrics: refusing to listen on {address or 'every interface'} without credentials: set "
            "MYCELIAL_METRICS_BEARER_TOKEN_FILE or MYCELIAL_METRICS_BASIC_AUTH_FILE (docs/metrics.md)",
            code=EXIT_BAD_INPUT,
        )
    if not is_loopback(address):
        warn(f"metrics listen on {address or 'every interface'}: plain HTTP, other machines can reach it")
    try:
        server, _cp = start_metrics(settings, address=address, port=port, auth=auth)
    except OSError as exc:
        raise CliError(f"metrics: cannot listen on {address}:{port}: {exc.strerror or exc}") from None
    host = f"[{address}]" if ":" in address else address
    info(
        f"metrics: http://{host or '0.0.0.0'}:{server.server_port}/metrics"
        f" ({'credentials required' if auth.required else 'no credentials'})"
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: stop.set())
    stop.wait()
    server.shutdown()
