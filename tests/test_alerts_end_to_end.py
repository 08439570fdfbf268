"""Alerts end to end, from a killed daemon or failing runs to a signed webhook on a real HTTP
receiver on 127.0.0.1, through real daemons, a control-plane worker and beat on PostgreSQL:

* a SIGKILLed daemon: one firing ``daemon_offline`` notice within the rule's ``for`` plus 15 s,
  while its pipeline's freshness alert is inhibited and sends nothing; the daemon back: one
  resolved notice, and only then the pipeline's still-holding alert is notified;
* a pipeline failing three times: one ``run_failures`` notice;
* a silenced pipeline failing three times: its alert fires and sends nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, wait_for
from tests.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.integration

HOLD_FOR_S = 5
FRESH_WITHIN_S = 30  # longer than a loaded machine takes to kill edge-a and see it offline after apply
CONFIG = """
daemons:
  - {{name: edge-a, labels: {{site: berlin}}}}
  - {{name: edge-b, labels: {{site: paris}}}}
connectors:
  - {{name: ghost, kind: sqlite, path: {ghost}}}
  - {{name: wh, kind: sqlite, path: {wh}}}
notifiers:
  - {{name: ops-hook, kind: webhook, url: '{url}', secret: '${{env:HOOK_SECRET}}', timeout: 5s}}
pipelines:
  - {{name: stale-a, source: {{connector: ghost, table: t}}, destination: {{connector: wh, table: a}},
     daemon: edge-a, retries: {{max_attempts: 1}}}}
  - {{name: broken-b, source: {{connector: ghost, table: t}}, destination: {{connector: wh, table: b}},
     daemon: edge-b, retries: {{max_attempts: 1}}}}
  - {{name: broken-c, source: {{connector: ghost, table: t}}, destination: {{connector: wh, table: c}},
     daemon: edge-b, retries: {{max_attempts: 1}}}}
alerts:
  settings: {{group_wait: 1s, group_interval: 1s}}
  rules:
    - {{name: edge-offline, kind: daemon_offline, for: {hold}s, severity: critical,
       daemons: {{names: [edge-a]}}, notify: [ops-hook]}}
    - {{name: failing, kind: run_failures, threshold: {{count: 3}},
       pipelines: {{names: [stale-a, broken-b, broken-c]}}, notify: [ops-hook]}}
    - {{name: stale, kind: freshness, threshold: {{within: {within}s}},
       pipelines: {{names: [stale-a]}}, notify: [ops-hook]}}
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def notices(receiver: Receiver, rule: str, status: str | None = None) -> list[dict[str, Any]]:
    return [
        r.body
        for r in receiver.snapshot()
        if r.body.get("rule") == rule and (status is None or r.body.get("status") == status)
    ]


def subjects(body: dict[str, Any]) -> list[str]:
    return [a["subject"] for a in body["alerts"]]


def alert(stack: Stack, rule: str, subject: str) -> dict[str, Any] | None:
    rows = stack.json("alerts")["alerts"]
    return next((a for a in rows if (a["rule"], a["subject"]) == (rule, subject)), None)


def arrived(receiver: Receiver, rule: str, status: str) -> Callable[[], list[dict[str, Any]]]:
    return lambda: notices(receiver, rule, status)


def fail_runs(stack: Stack, *pipelines: str) -> None:
    for pipeline in pipelines:
        result = stack.cli("run", pipeline, "--wait", "--timeout", "60")
        assert result.returncode == 1, f"{pipeline} should fail: {result.stdout}{result.stderr}"


def start(stack: Stack, tmp_path: Path, receiver: Receiver) -> None:
    stack.env["HOOK_SECRET"] = SECRET
    stack.start("worker", "worker")
    stack.start("beat", "beat")
    for name, site in (("edge-a", "berlin"), ("edge-b", "paris")):
        stack.start(name, "daemon", "--name", name, "--labels", f"site={site}")
    stack.wait_heard_from("edge-a", "edge-b")
    config = CONFIG.format(
        ghost=tmp_path / "gone.db",
        wh=tmp_path / "wh.db",
        url=f"http://127.0.0.1:{receiver.port}/hook",
        hold=HOLD_FOR_S,
        within=FRESH_WITHIN_S,
    )
    stack.cli("apply", "-f", str(stack.write_config(config)), check=True)


def test_offline_inhibition_run_failures_and_silences_reach_the_webhook_once(
    make_stack: Callable[..., Stack],
    make_database_url: Callable[[str], str],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    stack = make_stack(
        make_database_url("postgres"), heartbeat_interval="1", offline_after_missed="3", alerts_interval="1"
    )
    start(stack, tmp_path, receiver)
    stack.wait_online("edge-a", "edge-b")

    # (a) edge-a killed: one firing notice within `for` + 15 s, its pipeline's alert inhibited
    stack.procs["edge-a"].send_signal(signal.SIGKILL)
    [down] = wait_for(
        arrived(receiver, "edge-offline", "firing"),
        timeout=HOLD_FOR_S + 15,
        what="the firing edge-offline notice",
        stack=stack,
    )
    assert subjects(down) == ["daemon:edge-a"] and down["severity"] == "critical"
    assert down["sent_because"] == "new"
    stale = wait_for(
        lambda: (a := alert(stack, "stale", "pipeline:stale-a")) and a["state"] == "firing" and a,
        timeout=FRESH_WITHIN_S + 15,
        what="stale-a's freshness alert firing",
        stack=stack,
    )
    assert stale["inhibited_by"] == "daemon:edge-a offline"
    time.sleep(3)  # three evaluations and deliveries: an inhibited alert still sends nothing
    assert notices(receiver, "stale") == []

    stack.procs.pop("edge-a")
    stack.start("edge-a", "daemon", "--name", "edge-a", "--labels", "site=berlin")
    [back] = wait_for(
        arrived(receiver, "edge-offline", "resolved"), timeout=45, what="the resolved notice", stack=stack
    )
    assert subjects(back) == ["daemon:edge-a"] and back["alerts"][0]["state"] == "resolved"
    # no longer inhibited, the still-stale pipeline is notified like any other alert
    [late] = wait_for(arrived(receiver, "stale", "firing"), timeout=20, what="stale-a notified", stack=stack)
    assert subjects(late) == ["pipeline:stale-a"]

    # (b) and (c): broken-b fails three times, as does broken-c, silenced first
    stack.cli("alerts", "silence", "pipeline:broken-c", "--for", "2h", "-m", "test", check=True)
    fail_runs(stack, "broken-b", "broken-c", "broken-b", "broken-c", "broken-b")
    third_failure = time.monotonic()
    [failing] = wait_for(
        arrived(receiver, "failing", "firing"), timeout=30, what="the run_failures notice", stack=stack
    )
    took = time.monotonic() - third_failure
    assert subjects(failing) == ["pipeline:broken-b"]
    fail_runs(stack, "broken-c")
    silenced = wait_for(
        lambda: (a := alert(stack, "failing", "pipeline:broken-c")) and a["state"] == "firing" and a,
        timeout=30,
        what="broken-c's alert firing",
        stack=stack,
    )
    assert silenced["silenced_until"] is not None and silenced["silence_reason"] == "test"
    time.sleep(max(5.0, 2 * took))  # longer than broken-b's notice took to come
    assert all("pipeline:broken-c" not in subjects(b) for b in notices(receiver, "failing"))

    everything = receiver.snapshot()
    assert sorted((r.body["rule"], r.body["status"]) for r in everything) == [
        ("edge-offline", "firing"),
        ("edge-offline", "resolved"),
        ("failing", "firing"),
        ("stale", "firing"),
    ]
    assert all(r.signature_ok and r.path == "/hook" for r in everything), "a delivery badly signed"
    keys = [r.body["dedup_key"] for r in everything]
    assert [r.webhook_id for r in everything] == keys and len(set(keys)) == len(keys)
    assert SECRET not in stack.logs()
