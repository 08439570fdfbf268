"""The CLI contract of DESIGN section 9: one JSON document with --json, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Broker

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"
WAREHOUSE = "/var/lib/mycelial/daemons/local/data/warehouse.db"  # the demo's destination file


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    environ.update(MYCELIAL_HOME=str(home), **env)
    return subprocess.run(
        [sys.executable, "-m", "cp.cli", *args], env=environ, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("command", "key"),
    [
        (["daemons"], "daemons"),
        (["pipelines"], "pipelines"),
        (["runs"], "runs"),
        (["config", "history"], "versions"),
        (["events"], "events"),
    ],
)
def test_listings_print_one_json_document_and_need_no_broker(
    tmp_path: Path, command: list[str], key: str
) -> None:
    result = cli(tmp_path, *command, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {key: []}


def test_logs_print_one_object_a_line_and_need_no_broker(tmp_path: Path) -> None:
    result = cli(tmp_path, "logs", "--json")
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
    grouped = cli(tmp_path, "logs", "--errors", "--json")
    assert grouped.returncode == 0, grouped.stderr
    assert json.loads(grouped.stdout)["groups"] == []


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "nope"], {"MYCELIAL_BROKER_URL": "redis://127.0.0.1:1/0"}, "error: unknown pipeline 'nope'"),
        (["run", "nope"], {}, "error: no broker: set MYCELIAL_BROKER_URL"),
        (
            ["daemons"],
            {"MYCELIAL_HEARTBEAT_INTERVAL": "abc"},
            "error: invalid settings: MYCELIAL_HEARTBEAT_INTERVAL",
        ),
        (["daemons"], {"MYCELIAL_BROKER_URL": "amqp://x"}, "unsupported broker scheme 'amqp'"),
        (["daemon", "--name", "a b"], {}, "error: --name: invalid daemon name 'a b'"),
        (["daemon", "--name", "ab", "--labels", "site"], {}, "error: --labels: expected key=value pairs"),
        (["runs", "--state", "bogus"], {}, "error: --state: unknown state 'bogus'"),
        (
            ["logs", "--since", "yesterday"],
            {},
            "error: --since: expected an age like 10m, 2h, 7d or an ISO time",
        ),
        (
            ["logs", "--errors", "--until", "2026-13-45"],
            {},
            "error: --until: expected an age like 10m, 2h, 7d or an ISO time",
        ),
        (["logs", "--level", "loud"], {}, "error: --level: unknown level 'loud'"),
        (["logs", "--errors", "--follow"], {}, "error: --errors and --follow cannot be combined"),
        (["apply", "-f", "/nonexistent.yaml"], {}, "error: /nonexistent.yaml: cannot read file"),
        (["frob"], {}, "No such command 'frob'"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = cli(tmp_path, *args, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_file_reports_every_problem_and_stores_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        EXAMPLE.read_text()
        .replace('schedule: "* * * * *"', 'schedule: "61 * * * *"')
        .replace("timezone: UTC", "timezone: Mars/Olympus")
        .replace(f"kind: sqlite\n    path: {WAREHOUSE}", f"kind: oracle\n    path: {WAREHOUSE}")
    )
    result = cli(tmp_path, "apply", "-f", str(bad), MYCELIAL_BROKER_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {bad}: connectors[1].kind: unknown connector kind 'oracle'"
        " (known: csv, jsonl, mysql, postgres, sqlite)",
        f'error: {bad}: pipelines[0].schedule: invalid cron "61 * * * *"',
        f"error: {bad}: pipelines[0].timezone: unknown time zone 'Mars/Olympus'",
    ]
    assert json.loads(cli(tmp_path, "config", "history", "--json").stdout) == {"versions": []}


def test_diff_exits_1_with_changes_and_0_without(tmp_path: Path, broker: Broker) -> None:
    url = broker.fresh_url()
    changed = cli(tmp_path, "diff", "-f", str(EXAMPLE))
    assert changed.returncode == 1
    assert "+ pipeline orders-to-warehouse" in changed.stdout

    applied = cli(tmp_path, "apply", "-f", str(EXAMPLE), "-m", "first", MYCELIAL_BROKER_URL=url)
    assert applied.returncode == 0, applied.stderr
    assert "stored config version 1" in applied.stdout

    assert cli(tmp_path, "diff", "-f", str(EXAMPLE)).returncode == 0
    again = cli(tmp_path, "apply", "-f", str(EXAMPLE), MYCELIAL_BROKER_URL=url)
    assert "no changes: configuration is already at version 1" in again.stdout

    history = json.loads(cli(tmp_path, "config", "history", "--json").stdout)["versions"]
    assert [(v["version"], v["comment"]) for v in history] == [(1, "first")]


def test_pause_and_resume_a_pipeline(tmp_path: Path, broker: Broker) -> None:
    url = broker.fresh_url()
    assert cli(tmp_path, "apply", "-f", str(EXAMPLE), MYCELIAL_BROKER_URL=url).returncode == 0

    def paused() -> bool:
        [pipeline] = json.loads(cli(tmp_path, "pipelines", "--json").stdout)["pipelines"]
        return bool(pipeline["paused"])

    assert cli(tmp_path, "pause", "orders-to-warehouse").returncode == 0
    assert paused()
    # a paused pipeline stays paused when the configuration is applied again
    assert cli(tmp_path, "apply", "-f", str(EXAMPLE), MYCELIAL_BROKER_URL=url).returncode == 0
    assert paused()
    assert cli(tmp_path, "resume", "orders-to-warehouse").returncode == 0
    assert not paused()
    missing = cli(tmp_path, "pause", "nope")
    assert (missing.returncode, missing.stderr.strip()) == (2, "error: unknown pipeline 'nope'")
