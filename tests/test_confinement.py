"""Data-plane confinement with real processes (issue 10 point 6): a daemon's file connectors stay
under its data folder and the roots it is given; a config or a job that points elsewhere, directly,
through a link or forged onto its queue, is refused and writes nothing there."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cp.celery_app import make_celery
from cp.dispatch import CeleryDispatcher, run_job_message
from cp.protocol import ConnectorSpec, PipelineSpec
from cp.settings import Settings
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.integration

DAEMON = "edge-1"
PIPELINE = """
  - name: {name}
    source: {{connector: shop, table: orders}}
    destination: {{connector: {destination}, table: orders}}
    daemon: edge-1
"""


def make_source(path: Path, rows: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 1.5) for i in range(1, rows + 1)])


def count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])


def config(connectors: dict[str, Path], pipelines: dict[str, str]) -> str:
    text = f"daemons: [{{name: {DAEMON}}}]\nconnectors:\n"
    text += "".join(
        f"  - {{name: {name}, kind: sqlite, path: '{path}'}}\n" for name, path in connectors.items()
    )
    text += "pipelines:\n" + "".join(PIPELINE.format(name=n, destination=d) for n, d in pipelines.items())
    return text


def forge_job(stack: Stack, *, run_key: str, destination: Path, source: Path) -> None:
    """What an attacker with broker access sends: a job built by hand, published with the control
    plane's own Celery app (cp/dispatch.py makes jobs the same way)."""
    app = make_celery(Settings(home=stack.home, broker_url=stack.env["MYCELIAL_BROKER_URL"]))
    pipeline = PipelineSpec(
        name="orders-to-me",
        source=ConnectorSpec(name="shop", kind="sqlite", options={"path": str(source)}),
        source_table="orders",
        destination=ConnectorSpec(name="mine", kind="sqlite", options={"path": str(destination)}),
        destination_table="stolen",
    )
    message = run_job_message(
        daemon=DAEMON,
        run_key=run_key,
        task_id=run_key,
        attempt=1,
        pipeline=pipeline,
        cursor=None,
        expires=600,
        max_attempts=1,
    )
    CeleryDispatcher(app).send(message)
    app.close()


def test_file_connectors_stay_under_the_daemons_roots(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    extra, flagged, outside = tmp_path / "extra", tmp_path / "flagged", tmp_path / "outside"
    for folder in (extra, flagged, outside):
        folder.mkdir()
    # the setting names one root; the daemon's data folder is one by default; --allow-root adds one
    stack = make_stack(make_database_url("sqlite"), allowed_roots=str(extra))
    data = stack.home / "daemons" / DAEMON / "data"
    shop = extra / "shop.db"
    make_source(shop)
    stack.start("worker", "worker", "--concurrency", "2")
    stack.start("daemon", "daemon", "--name", DAEMON, "--allow-root", str(flagged))
    stack.wait_heard_from(DAEMON)
    assert data.is_dir() and data.stat().st_mode & 0o777 == 0o700

    connectors = {
        "shop": shop,
        "in-extra": extra / "wh.db",
        "in-data": data / "wh.db",
        "flag": flagged / "wh.db",
    }
    allowed = {"to-extra": "in-extra", "to-data": "in-data", "to-flagged": "flag"}
    stack.cli("apply", "-f", str(stack.write_config(config(connectors, allowed))), check=True)
    wait_for(
        lambda: (d := stack.daemon(DAEMON)) and d["applied_config_version"] == 1,
        timeout=60,
        what="version 1 applied",
        stack=stack,
    )
    for name in allowed:
        ok = stack.cli("run", name, "--wait", "--timeout", "60")
        assert ok.returncode == 0, ok.stdout + ok.stderr + stack.logs()
    assert count(extra / "wh.db") == count(data / "wh.db") == count(flagged / "wh.db") == 20

    # a pushed config pointing outside, directly or through a link in a root, is refused whole
    (data / "link").symlink_to(outside)
    connectors |= {"outside": outside / "wh.db", "linked": data / "link" / "wh.db"}
    escaping = allowed | {"to-outside": "outside", "through-link": "linked"}
    stack.cli("apply", "-f", str(stack.write_config(config(connectors, escaping))), check=True)
    daemon = wait_for(
        lambda: (d := stack.daemon(DAEMON)) and d["config_error"] and d,
        timeout=60,
        what="version 2 refused",
        stack=stack,
    )
    assert daemon["applied_config_version"] == 1  # the daemon keeps what it had
    roots = f"{data}, {extra}, {flagged}"
    assert daemon["config_error"].startswith("refused by the daemon's confinement: pipeline through-link:")
    assert f"path {outside}/wh.db is outside the allowed roots ({roots})" in daemon["config_error"]
    assert f"path {data}/link/wh.db resolves to {outside}/wh.db, which is outside" in daemon["config_error"]

    # the control plane still sends their jobs (it cannot judge the daemon's roots): each one fails
    # at once, not retryable, naming the path and the roots
    failed = stack.cli("run", "to-outside", "--wait", "--timeout", "60")
    assert failed.returncode == 1
    assert (
        f"pipeline to-outside: destination outside: option 'path': path {outside}/wh.db is outside the"
        f" allowed roots ({roots}); MYCELIAL_ALLOWED_ROOTS or --allow-root adds roots"
    ) in failed.stderr
    linked = stack.cli("run", "through-link", "--wait", "--timeout", "60")
    assert linked.returncode == 1
    assert f"resolves to {outside}/wh.db, which is outside the allowed roots" in linked.stderr
    runs = {r["pipeline"]: r for r in stack.json("runs")["runs"]}
    for name in ("to-outside", "through-link"):
        assert (runs[name]["state"], runs[name]["attempt"], runs[name]["error_retryable"]) == (
            "failed",
            1,
            False,
        )

    # a job forged onto the daemon's queue gets no further than a pushed one
    forged = f"forged-{uuid.uuid4().hex[:8]}"
    forge_job(stack, run_key=forged, destination=outside / "stolen.db", source=shop)
    daemon_log = stack.home / "daemon.log"
    wait_for(
        lambda: (
            f"run {forged} failed: pipeline orders-to-me: destination mine: option 'path': path"
            f" {outside}/stolen.db is outside the allowed roots" in daemon_log.read_text(errors="replace")
        ),
        timeout=60,
        what="the forged job refused",
        stack=stack,
    )
    assert list(outside.iterdir()) == []  # nothing written there, not even an empty file

    # the same forged job inside a root would have run: only the confinement stopped it
    inside = f"forged-{uuid.uuid4().hex[:8]}"
    forge_job(stack, run_key=inside, destination=extra / "stolen.db", source=shop)
    wait_for(
        lambda: (extra / "stolen.db").exists(), timeout=60, what="the forged job inside a root", stack=stack
    )


def test_confinement_settings_and_paths_that_are_wrong_anywhere_are_refused_up_front(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    url = make_database_url("sqlite")
    for setting, message in (
        (
            {"allowed_roots": "data:/srv"},
            "error: MYCELIAL_ALLOWED_ROOTS: root 'data' is not an absolute path",
        ),
        ({"allowed_connector_kinds": "sqlite,oracle"}, "error: MYCELIAL_ALLOWED_CONNECTOR_KINDS: unknown"),
        ({"allowed_hosts": "db.internal,*."}, "error: MYCELIAL_ALLOWED_HOSTS: '*.' is not a wildcard"),
    ):
        stack = make_stack(url, **setting)
        started = stack.cli("daemon", "--name", DAEMON, timeout=60)
        assert started.returncode == 2, started.stdout + started.stderr
        assert started.stderr.startswith(message) and len(started.stderr.splitlines()) == 1, started.stderr

    stack = make_stack(url)
    bad = config({"shop": Path("/data/../etc/shop.db"), "wh": Path("warehouse.db")}, {"p": "wh"})
    applied = stack.cli("apply", "-f", str(stack.write_config(bad)))
    assert applied.returncode == 2
    assert applied.stderr.splitlines() == [
        f"error: {stack.home}/config.yaml: connectors[0].path: connector 'shop':"
        " '/data/../etc/shop.db' has a '..' segment; write the path without it",
        f"error: {stack.home}/config.yaml: connectors[1].path: connector 'wh': 'warehouse.db' is not an"
        " absolute path; write the full path on the daemon (file connectors stay under the daemon's"
        " allowed roots, its data folder by default)",
    ]
    assert stack.json("config", "history")["versions"] == []
