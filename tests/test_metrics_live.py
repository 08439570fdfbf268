"""`mycelial metrics` beside a real worker and daemon: the control plane's own counters (messages
handled and refused, events, finished runs and their rows) reach /metrics through the broker, and
a killed daemon shows offline there."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cp.protocol import CP_HEARTBEAT, CP_QUEUE
from tests.conftest import Stack, wait_for
from tests.poison import client_for, heartbeat_payload, push, task_message
from tests.test_live_status import start_edge
from tests.test_scheduling_faults import PIPELINE, make_source
from tests.test_up import free_port

pytestmark = pytest.mark.integration
CREDENTIALS = "prometheus:scrape-secret"


def scrape(
    url: str, *, auth: str | None = CREDENTIALS
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    response = httpx.get(url, headers=headers, timeout=10)
    response.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(got: dict[Any, float], name: str, **labels: str) -> float | None:
    return got.get((name, frozenset(labels.items())))


def test_counters_of_the_control_plane_and_a_killed_daemon_show_on_metrics(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    port = free_port()
    stack = make_stack(
        make_database_url("sqlite"), metrics_counter_flush_interval="0.5", metrics_port=str(port)
    )
    (stack.home / "scrape-credentials").write_text(CREDENTIALS + "\n")
    stack.env["MYCELIAL_METRICS_BASIC_AUTH_FILE"] = str(stack.home / "scrape-credentials")
    url = f"http://127.0.0.1:{port}/metrics"
    make_source(stack.home / "shop.db")
    stack.start("worker", "worker")
    start_edge(stack, PIPELINE.format(name="orders", table="items", extra=""))
    stack.cli("run", "orders", "--wait", "--timeout", "60", check=True)
    # a message the guard refuses: an unsigned heartbeat on the control plane's queue
    client = client_for(stack.env["MYCELIAL_BROKER_URL"])
    push(client, CP_QUEUE, task_message(CP_QUEUE, CP_HEARTBEAT, heartbeat_payload("edge-f")))
    stack.start("metrics", "metrics")

    def answering() -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 401  # no credentials, refused
        except httpx.HTTPError:
            return False

    wait_for(answering, timeout=30, what="/metrics refusing a scrape without credentials", stack=stack)
    assert httpx.get(url, headers={"Authorization": "Basic bm9ib2R5Om5vcGU="}, timeout=5).status_code == 401

    def counted() -> dict[Any, float] | None:
        got = scrape(url)
        finished = value(got, "mycelial_pipeline_runs_finished_total", pipeline="orders", state="succeeded")
        refused = value(got, "mycelial_cp_messages_rejected_total", task=CP_HEARTBEAT, kind="security")
        return got if finished == 1 and refused and refused >= 1 else None

    got = wait_for(counted, timeout=30, what="the workers' counters on /metrics", stack=stack)
    assert value(got, "mycelial_pipeline_rows_written_total", pipeline="orders") == 5
    handled = value(got, "mycelial_cp_messages_handled_total", task="cp.run_event")
    assert handled is not None and handled >= 2  # started and succeeded, at least
    recorded = value(got, "mycelial_cp_events_recorded_total", kind="status")
    assert recorded is not None and recorded >= 1  # edge-f went online
    assert value(got, "mycelial_daemon_status", daemon="edge-f", status="online") == 1
    assert value(got, "mycelial_pipeline_runs", pipeline="orders", state="succeeded") == 1

    stack.stop("daemon", kill=True)
    wait_for(
        lambda: value(scrape(url), "mycelial_daemon_status", daemon="edge-f", status="offline") == 1,
        timeout=30,
        what="edge-f offline on /metrics",
        stack=stack,
    )
