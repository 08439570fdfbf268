"""`mycelial apply` and `diff` treat a configuration file as untrusted input, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.test_cli_contract import EXAMPLE, cli

NO_BROKER = {"MYCELIAL_BROKER_URL": "redis://127.0.0.1:1/0"}


def versions(home: Path) -> list[dict[str, object]]:
    history = cli(home, "config", "history", "--json")
    assert history.returncode == 0, history.stderr
    versions: list[dict[str, object]] = json.loads(history.stdout)["versions"]
    return versions


def assert_refused(result: object, *expected: str) -> None:
    """Exit 2, no traceback, and exactly the ``expected`` lines on stderr."""
    assert result.returncode == 2, result.stdout + result.stderr  # type: ignore[attr-defined]
    assert result.stderr.splitlines() == [f"error: {line}" for line in expected]  # type: ignore[attr-defined]


def test_a_repeated_pipelines_key_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    text = EXAMPLE.read_text() + "\npipelines: []\n"
    path.write_text(text)
    first = text.splitlines().index("pipelines:") + 1

    result = cli(tmp_path, "apply", "-f", str(path), **NO_BROKER)

    assert_refused(
        result, f"{path}: line {len(text.splitlines())}: duplicate key 'pipelines' (first at line {first})"
    )
    assert versions(tmp_path) == []


@pytest.mark.parametrize("text", ["", "# nothing here any more\n"], ids=["empty", "comments-only"])
def test_an_empty_file_does_not_remove_an_applied_configuration(
    tmp_path: Path, broker: Broker, text: str
) -> None:
    url = broker.fresh_url()
    assert cli(tmp_path, "apply", "-f", str(EXAMPLE), MYCELIAL_BROKER_URL=url).returncode == 0
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    refusal = f"{empty}: empty configuration; it would remove everything (pass --allow-empty to do that)"

    assert_refused(cli(tmp_path, "apply", "-f", str(empty), MYCELIAL_BROKER_URL=url), refusal)
    assert_refused(cli(tmp_path, "diff", "-f", str(empty)), refusal)
    assert [v["pipelines"] for v in versions(tmp_path)] == [1]


def test_allow_empty_removes_everything_on_purpose(tmp_path: Path, broker: Broker) -> None:
    url = broker.fresh_url()
    assert cli(tmp_path, "apply", "-f", str(EXAMPLE), MYCELIAL_BROKER_URL=url).returncode == 0
    empty = tmp_path / "empty.yaml"
    empty.write_text("# everything goes\n")

    planned = cli(tmp_path, "diff", "-f", str(empty), "--allow-empty")
    applied = cli(tmp_path, "apply", "-f", str(empty), "--allow-empty", MYCELIAL_BROKER_URL=url)

    assert planned.returncode == 1, planned.stderr
    assert "- pipeline orders-to-warehouse" in planned.stdout
    assert applied.returncode == 0, applied.stderr
    assert [(v["version"], v["pipelines"], v["daemons"]) for v in versions(tmp_path)] == [
        (2, 0, 0),
        (1, 1, 1),
    ]


def test_a_file_over_the_size_limit_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as out:
        out.write(EXAMPLE.read_bytes())
        out.write(b"#" * (50 * 1024 * 1024) + b"\n")

    result = cli(tmp_path, "apply", "-f", str(path), **NO_BROKER)

    assert_refused(result, f"{path}: file is larger than 4194304 bytes (the limit MYCELIAL_CONFIG_MAX_BYTES)")


def test_the_size_limit_is_a_setting(tmp_path: Path) -> None:
    result = cli(tmp_path, "diff", "-f", str(EXAMPLE), MYCELIAL_CONFIG_MAX_BYTES="100")

    assert_refused(result, f"{EXAMPLE}: file is larger than 100 bytes (the limit MYCELIAL_CONFIG_MAX_BYTES)")


def test_an_alias_amplifier_is_refused_at_once(tmp_path: Path) -> None:
    lines = [f"l0: &l0 [{', '.join(['lol'] * 10)}]"]
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text(EXAMPLE.read_text() + "\n".join(lines) + "\n")
    line = len(EXAMPLE.read_text().splitlines()) + 6

    result = cli(tmp_path, "apply", "-f", str(path), **NO_BROKER)

    assert_refused(
        result,
        f"{path}: line {line}: the document expands to more than 500000 nodes "
        "(aliases count as what they stand for; the limit MYCELIAL_CONFIG_MAX_NODES)",
    )


def test_a_file_that_is_not_utf8_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    text = EXAMPLE.read_text().replace("site: local", "site: Köln")
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xf6")

    result = cli(tmp_path, "apply", "-f", str(path), **NO_BROKER)

    assert_refused(result, f"{path}: not UTF-8 text: invalid byte 0xf6 at byte offset {offset} (line 6)")


def test_a_destination_with_the_reserved_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stage.yaml"
    path.write_text(
        EXAMPLE.read_text().replace(
            "      table: orders\n    mode", "      table: _mycelial_stage_x\n    mode"
        )
    )

    result = cli(tmp_path, "apply", "-f", str(path), **NO_BROKER)

    assert_refused(
        result,
        f"{path}: pipelines[0].destination.table: '_mycelial_stage_x' starts with the reserved prefix "
        "_mycelial (the engine's own staging and state tables)",
    )
    assert versions(tmp_path) == []
