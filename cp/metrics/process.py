"""``mycelial metrics``: the collector over this control plane's database and broker, served."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer

from cp.health import HealthLimits
from cp.messaging.broker_client import broker_client
from cp.metrics.collector import CollectorLimits, ControlPlaneCollector
from cp.metrics.server import MetricsAuth, load_auth, serve
from cp.models import utcnow
from cp.runtime import ControlPlane
from cp.settings import Settings

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def collector_limits(settings: Settings) -> CollectorLimits:
    return CollectorLimits(
        health=HealthLimits.from_settings(settings),
        stale_after=settings.checker_stale_after,
        max_daemons=settings.metrics_max_daemons,
        max_pipelines=settings.metrics_max_pipelines,
        peek_bytes=settings.metrics_peek_bytes,
    )


def make_collector(cp: ControlPlane) -> ControlPlaneCollector:
    @contextmanager
    def broker() -> Iterator[Any]:
        opened = broker_client(cp.app)
        if opened is None:
            raise RuntimeError("the broker is not Redis: its queues cannot be read")
        connection, client = opened
        try:
            yield client
        finally:
            connection.release()

    return ControlPlaneCollector(
        session=cp.session, broker=broker, limits=collector_limits(cp.settings), clock=utcnow
    )


def metrics_auth(settings: Settings) -> MetricsAuth:
    return load_auth(
        basic_file=settings.metrics_basic_auth_file, bearer_file=settings.metrics_bearer_token_file
    )


def start_metrics(
    settings: Settings, *, address: str, port: int, auth: MetricsAuth
) -> tuple[ThreadingWSGIServer, ControlPlane]:
    """The server, listening; the collector reads on each scrape (nothing is read before one)."""
    cp = ControlPlane(settings)
    _ = cp.app  # a missing broker setting is an error now, not at the first scrape
    registry = CollectorRegistry(auto_describe=False)
    registry.register(make_collector(cp))
    return serve(registry, address=address, port=port, auth=auth), cp


def is_loopback(address: str) -> bool:
    return address in LOOPBACK
