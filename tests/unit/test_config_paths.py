"""Specification of the file paths ``mycelial apply`` refuses: those that are wrong on any daemon.
Whether an absolute path lies under a daemon's allowed roots only that daemon can tell."""

from __future__ import annotations

import pytest

from cp.config_file import ConfigError, parse_config_text

BASE = """
daemons: [{{name: edge}}]
connectors:
  - {{name: shop, kind: {kind}, path: {path}}}
  - {{name: warehouse, kind: sqlite, path: /data/warehouse.db}}
pipelines:
  - name: p
    source: {{connector: shop, table: t}}
    destination: {{connector: warehouse, table: t}}
    daemon: edge
"""


def problems(path: str, *, kind: str = "sqlite") -> list[str]:
    try:
        parse_config_text(BASE.format(kind=kind, path=path), source="f.yaml")
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize("kind", ["sqlite", "csv", "jsonl"])
@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("shop.db", "'shop.db' is not an absolute path; write the full path on the daemon"),
        ("./shop.db", "'./shop.db' is not an absolute path"),
        ("'~/shop.db'", "'~/shop.db' is not an absolute path"),
        ("/data/../etc/shop.db", "'/data/../etc/shop.db' has a '..' segment; write the path without it"),
        ("/data/in/..", "'/data/in/..' has a '..' segment"),
        ('"/data/a\\0b.db"', "a path must not contain a NUL byte"),
    ],
)
def test_a_relative_path_or_one_with_dot_dot_is_refused_naming_connector_and_option(
    kind: str, path: str, why: str
) -> None:
    (problem,) = problems(path, kind=kind)
    assert problem.startswith(f"f.yaml: connectors[0].path: connector 'shop': {why}")


@pytest.mark.parametrize("path", ["/data/shop.db", "/data/..shop/x.db", "/data/shop..db", "//data//shop.db"])
def test_an_absolute_path_without_dot_dot_segments_is_left_to_the_daemon(path: str) -> None:
    assert problems(path) == []


def test_a_reference_in_a_path_gets_the_reference_problem_only() -> None:
    (problem,) = problems("'${env:DIR}/shop.db'")
    assert "a secret reference is not allowed here" in problem
