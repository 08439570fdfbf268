"""`mycelial alerts`: listings as one JSON document, silences, and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli_contract import cli


def test_the_listings_print_one_json_document_and_need_no_broker(tmp_path: Path) -> None:
    listed = cli(tmp_path, "alerts", "--json")
    history = cli(tmp_path, "alerts", "history", "--json")
    also_history = cli(tmp_path, "alerts", "--history", "--json")

    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"alerts": [], "silences": []}
    assert json.loads(history.stdout) == json.loads(also_history.stdout) == {"history": []}


def test_a_silence_is_listed_until_it_is_removed(tmp_path: Path) -> None:
    added = cli(tmp_path, "alerts", "silence", "daemon:edge-1", "--for", "2h", "-m", "maintenance")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("silenced daemon:edge-1 until ")

    [silence] = json.loads(cli(tmp_path, "alerts", "--json").stdout)["silences"]
    assert (silence["matcher"], silence["reason"]) == ("daemon:edge-1", "maintenance")

    assert cli(tmp_path, "alerts", "unsilence", "daemon:edge-1").returncode == 0
    assert json.loads(cli(tmp_path, "alerts", "--json").stdout)["silences"] == []
    again = cli(tmp_path, "alerts", "unsilence", "daemon:edge-1")
    assert (again.returncode, again.stderr) == (1, "error: no active silence for 'daemon:edge-1'\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--state", "burning"], "error: --state: unknown state 'burning'", id="state"),
        pytest.param(
            ["silence", "daemon:edge-1", "--for", "2 parsecs", "-m", "x"],
            "error: --for: expected a duration like 30s, 5m, 4h or 1d",
            id="duration",
        ),
        pytest.param(["silence", "daemon:edge-1", "--for", "0s", "-m", "x"], "error: --for:", id="zero"),
        pytest.param(
            ["silence", "daemon:edge-1", "--for", "2h", "-m", " "], "error: -m: give a reason", id="reason"
        ),
        pytest.param(
            ["silence", "no-such-rule", "--for", "2h", "-m", "x"],
            "error: RULE-OR-SUBJECT: no rule or alert named 'no-such-rule'",
            id="unknown-rule",
        ),
        pytest.param(
            ["silence", "bad name!", "--for", "2h", "-m", "x"],
            "error: RULE-OR-SUBJECT: expected a rule name or a subject",
            id="bad-matcher",
        ),
        pytest.param(["silence", "daemon:edge-1", "-m", "x"], "Missing option '--for'", id="missing-for"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = cli(tmp_path, "alerts", *args)

    assert result.returncode == 2
    assert message in result.stderr
    if message.startswith("error:"):
        assert result.stderr.count("\n") == 1
