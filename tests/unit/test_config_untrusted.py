"""A configuration file is untrusted input: its size, encoding, keys, aliases and depth are bounded."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from cp.config.limits import ConfigLimits
from cp.config.safe_yaml import BoundedLoader, PythonBoundedLoader, load_yaml
from cp.config_file import ConfigError, load_config_file, parse_config_text
from cp.settings import Settings

SOURCE = "mycelial.yaml"
SMALL = ConfigLimits(max_bytes=10_000, max_nodes=1_000, max_text=5_000, max_depth=12)


def problems(text: str, *, limits: ConfigLimits | None = None, allow_empty: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, source=SOURCE, limits=limits, allow_empty=allow_empty)
    return caught.value.problems


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# --- duplicate keys -----------------------------------------------------------------------


def test_a_repeated_top_level_key_names_the_key_and_both_lines(raw_config: dict[str, Any]) -> None:
    text = yaml.safe_dump(raw_config, sort_keys=False) + "pipelines: []\n"
    first = text.splitlines().index("pipelines:") + 1
    last = len(text.splitlines())

    assert problems(text) == [f"{SOURCE}: line {last}: duplicate key 'pipelines' (first at line {first})"]


def test_a_repeated_key_inside_a_pipeline_is_an_error_not_the_last_value(raw_config: dict[str, Any]) -> None:
    text = yaml.safe_dump(raw_config, sort_keys=False).replace(
        "  schedule: 0 * * * *\n", "  schedule: 0 * * * *\n  schedule: '*/5 * * * *'\n", 1
    )

    first = text.splitlines().index("  schedule: 0 * * * *") + 1

    assert problems(text) == [f"{SOURCE}: line {first + 1}: duplicate key 'schedule' (first at line {first})"]


def test_keys_that_are_equal_as_values_are_duplicates_however_they_are_written() -> None:
    assert problems("daemons: []\n'daemons': []\n") == [
        f"{SOURCE}: line 2: duplicate key 'daemons' (first at line 1)"
    ]


def test_an_explicit_key_may_override_a_merged_one(raw_config: dict[str, Any]) -> None:
    text = """
defaults: &defaults {connector: shop, table: orders}
daemons: [{name: edge-1}]
connectors:
  - {name: shop, kind: sqlite, path: /data/shop.db}
  - {name: warehouse, kind: sqlite, path: /data/warehouse.db}
pipelines:
  - name: orders
    source: *defaults
    destination:
      <<: *defaults
      connector: warehouse
    daemon: edge-1
"""
    # the merge works; the helper key is then an unknown field, which is reported as such
    assert problems(text) == [f"{SOURCE}: defaults: unknown field"]


def test_a_repeated_key_in_a_mapping_that_is_merged_elsewhere_is_still_found() -> None:
    text = "base: &base {a: 1, a: 2}\nother:\n  <<: *base\n  b: 3\n"

    assert problems(text) == [f"{SOURCE}: line 1: duplicate key 'a' (first at line 1)"]


# --- empty files --------------------------------------------------------------------------

EMPTY = "empty configuration; it would remove everything (pass --allow-empty to do that)"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "# every line a comment\n# another\n",
        "---\n",
        "{}\n",
        "~\n",
        "daemons: []\npipelines: []\n",
    ],
    ids=["empty", "blank", "comments", "document-marker", "empty-mapping", "null", "empty-sections"],
)
def test_a_file_that_declares_nothing_is_refused(text: str) -> None:
    assert problems(text) == [f"{SOURCE}: {EMPTY}"]


def test_a_file_that_declares_nothing_is_accepted_when_removing_everything_is_allowed() -> None:
    document = parse_config_text("# nothing left\n", source=SOURCE, allow_empty=True)

    assert document == {"daemons": [], "connectors": [], "pipelines": []}


def test_a_file_that_only_declares_daemons_is_not_empty() -> None:
    document = parse_config_text("daemons: [{name: edge-1}]\n", source=SOURCE)

    assert document["daemons"] == [{"name": "edge-1", "labels": {}}]


# --- alias expansion and depth ------------------------------------------------------------


def test_a_billion_laughs_document_fails_fast_with_small_memory() -> None:
    text = billion_laughs()

    tracemalloc.start()
    try:
        found = problems(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert found == [
        f"{SOURCE}: line 6: the document expands to more than 500000 nodes (aliases count as what "
        "they stand for; the limit MYCELIAL_CONFIG_MAX_NODES)"
    ]
    assert peak < 5_000_000


def test_a_long_value_repeated_through_aliases_is_bounded_by_its_expanded_text() -> None:
    text = f"big: &big '{'x' * 1_000}'\nmany: [{', '.join(['*big'] * 10)}]\n"

    assert problems(text, limits=SMALL) == [
        f"{SOURCE}: line 2: the document expands to more than 5000 characters of values (aliases "
        "count as what they stand for; the limit MYCELIAL_CONFIG_MAX_TEXT)"
    ]


def test_a_document_with_too_many_nodes_is_refused_even_without_aliases() -> None:
    text = "daemons: [" + ", ".join(["1"] * 2_000) + "]\n"

    assert problems(text, limits=SMALL)[0].startswith(
        f"{SOURCE}: line 1: the document expands to more than 1000"
    )


def test_a_recursive_alias_is_refused() -> None:
    assert problems("daemons: &loop [*loop]\n") == [f"{SOURCE}: line 1: recursive alias *loop"]


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    text = "daemons: " + "[" * 20 + "]" * 20 + "\n"

    assert problems(text, limits=SMALL) == [
        f"{SOURCE}: line 1: nested deeper than 12 levels (the limit MYCELIAL_CONFIG_MAX_DEPTH)"
    ]


def test_an_alias_counts_as_deep_as_the_node_it_stands_for() -> None:
    text = "deep: &deep " + "[" * 8 + "]" * 8 + "\nhere: " + "[" * 6 + "*deep" + "]" * 6 + "\n"

    assert problems(text, limits=SMALL) == [
        f"{SOURCE}: line 2: nested deeper than 12 levels (the limit MYCELIAL_CONFIG_MAX_DEPTH)"
    ]


def test_nesting_past_the_default_limit_is_refused() -> None:
    assert problems("daemons: " + "[" * 40 + "]" * 40) == [
        f"{SOURCE}: line 1: nested deeper than 32 levels (the limit MYCELIAL_CONFIG_MAX_DEPTH)"
    ]


def test_nesting_far_past_the_stack_is_one_line_and_not_a_crash() -> None:
    (problem,) = problems("daemons: " + "[" * 50_000)

    assert problem.startswith(f"{SOURCE}: ")
    assert "nest" in problem


def test_aliases_within_the_limits_load_as_the_values_they_stand_for(raw_config: dict[str, Any]) -> None:
    text = """
site: &berlin {site: berlin}
daemons:
  - {name: edge-1, labels: *berlin}
  - {name: edge-2, labels: *berlin}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, source=SOURCE)
    assert caught.value.problems == [f"{SOURCE}: site: unknown field"]


# --- size and encoding --------------------------------------------------------------------


def test_a_file_larger_than_the_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"daemons: [" + b"{name: x}, " * 2_000 + b"]\n")

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, limits=SMALL)

    assert caught.value.problems == [
        f"{path}: file is larger than 10000 bytes (the limit MYCELIAL_CONFIG_MAX_BYTES)"
    ]


def test_a_file_exactly_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    text = "daemons: [{name: edge-1}]\n"
    path.write_text(text + "#" * (SMALL.max_bytes - len(text) - 1) + "\n", encoding="utf-8")

    assert load_config_file(path, limits=SMALL)["daemons"] == [{"name": "edge-1", "labels": {}}]


def test_an_endless_device_is_read_only_up_to_the_limit() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_file(Path("/dev/zero"), limits=SMALL)

    assert caught.value.problems == [
        "/dev/zero: file is larger than 10000 bytes (the limit MYCELIAL_CONFIG_MAX_BYTES)"
    ]


def test_text_given_directly_is_bounded_by_the_same_limit() -> None:
    assert problems("#" * 10_001, limits=SMALL) == [
        f"{SOURCE}: larger than 10000 bytes (the limit MYCELIAL_CONFIG_MAX_BYTES)"
    ]


def test_a_file_that_is_not_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("daemons:\n  - name: café\n".encode("latin-1"))

    with pytest.raises(ConfigError) as caught:
        load_config_file(path)

    assert caught.value.problems == [f"{path}: not UTF-8 text: invalid byte 0xe9 at byte offset 22 (line 2)"]


def test_a_control_character_names_its_line_and_column() -> None:
    assert problems("daemons:\n  - name: 'a\x07'\n") == [
        f"{SOURCE}: line 2, column 13: unacceptable character #x0007 in YAML"
    ]


# --- values are JSON types ----------------------------------------------------------------


def test_a_date_like_value_stays_text() -> None:
    document = parse_config_text("daemons: [{name: edge-1, labels: {since: 2024-01-31}}]\n", source=SOURCE)

    assert document["daemons"][0]["labels"] == {"since": "2024-01-31"}


@pytest.mark.parametrize("tag", ["!!binary aGVsbG8=", "!!timestamp 2024-01-31", "!!set {a}", "!!omap [a: 1]"])
def test_tags_whose_values_are_not_json_are_refused(tag: str) -> None:
    (problem,) = problems(f"daemons: [{{name: edge-1, labels: {{since: {tag}}}}}]\n")

    assert problem.startswith(f"{SOURCE}: invalid YAML at line 1, column 42: tag tag:yaml.org,2002:")
    assert problem.endswith("is not supported (use plain text)")


def test_an_integer_too_long_to_convert_is_an_error() -> None:
    (problem,) = problems("daemons: " + "9" * 5_000 + "\n")

    assert problem.startswith(f"{SOURCE}: invalid YAML at line 1, column 10: cannot read '9999")
    assert problem.endswith("... as int")


@pytest.mark.parametrize("value", ["!!int ''", "!!float abc", "!!bool maybe", "!!int 0x"])
def test_an_explicit_tag_on_a_value_it_does_not_fit_is_an_error(value: str) -> None:
    (problem,) = problems(f"daemons: {value}\n")

    assert problem.startswith(f"{SOURCE}: invalid YAML at line 1, column 10: cannot read ")


def test_a_name_far_too_long_is_shown_shortened_in_its_one_line_problem() -> None:
    (problem,) = problems(f"daemons: [{{name: {'n' * 100_000}}}]\n")

    assert problem.startswith(f"{SOURCE}: daemons[0].name: invalid name 'nnnn")
    assert len(problem) < 200


def test_a_time_zone_name_too_long_for_a_path_is_an_unknown_time_zone(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][0]["timezone"] = "Europe/" + "x" * 1_000
    text = yaml.safe_dump(raw_config, sort_keys=False)

    (problem,) = problems(text)
    assert problem.startswith(f"{SOURCE}: pipelines[0].timezone: unknown time zone 'Europe/xxx")


def test_a_flood_of_problems_is_cut_to_a_readable_list() -> None:
    text = "daemons: [" + ", ".join(["{name: 'a b'}"] * 500) + "]\n"

    found = problems(text)

    assert len(found) == 101
    assert found[-1] == "... and 400 more problems"


# --- limits -------------------------------------------------------------------------------


def test_the_limits_come_from_the_settings() -> None:
    settings = Settings(config_max_bytes=1, config_max_nodes=2, config_max_text=3, config_max_depth=4)

    assert ConfigLimits.from_settings(settings) == ConfigLimits(
        max_bytes=1, max_nodes=2, max_text=3, max_depth=4
    )


def test_the_default_limits_are_the_documented_ones() -> None:
    assert ConfigLimits.defaults() == ConfigLimits(
        max_bytes=4 * 1024 * 1024, max_nodes=500_000, max_text=8 * 1024 * 1024, max_depth=32
    )


def test_a_leading_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfdaemons: [{name: edge-1}]\n")

    assert load_config_file(path)["daemons"] == [{"name": "edge-1", "labels": {}}]


def test_a_python_tag_is_refused() -> None:
    (problem,) = problems("daemons: !!python/object:os.system [echo]\n")

    assert problem.startswith(
        f"{SOURCE}: invalid YAML at line 1, column 10: could not determine a constructor"
    )


# --- both parsers -------------------------------------------------------------------------

PARSERS = pytest.mark.parametrize(
    "loader", [BoundedLoader, PythonBoundedLoader], ids=["default", "pure-python"]
)


@PARSERS
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: 1\nb: 2\na: 3\n", "line 3: duplicate key 'a' (first at line 1)"),
        (billion_laughs(levels=3), "line 3: the document expands to more than 1000 nodes"),
        ("a: &x [1, *x]\n", "line 1: recursive alias *x"),
        ("a: " + "[" * 13 + "]" * 13 + "\n", "line 1: nested deeper than 12 levels"),
        (f"a: &a '{'x' * 3_000}'\nb: *a\n", "line 2: the document expands to more than 5000 characters"),
        ("a: 'bell \x07'\n", "line 1, column 10: unacceptable character #x0007 in YAML"),
        ("a: !!set {x}\n", "invalid YAML at line 1, column 4: tag tag:yaml.org,2002:set is not supported"),
    ],
    ids=["duplicate", "laughs", "recursive", "deep", "long-text", "control", "set"],
)
def test_both_parsers_enforce_the_same_bounds(loader: Any, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml(text, source=SOURCE, limits=SMALL, loader_class=loader)

    (found,) = caught.value.problems
    assert found.startswith(f"{SOURCE}: {problem}")


@PARSERS
def test_both_parsers_give_the_same_values(loader: Any) -> None:
    text = "base: &b {x: 1, when: 2024-01-31}\nuse:\n  <<: *b\n  x: 2\nlist: [*b, ~, yes, 0x1f]\n"

    assert load_yaml(text, source=SOURCE, limits=SMALL, loader_class=loader) == {
        "base": {"x": 1, "when": "2024-01-31"},
        "use": {"x": 2, "when": "2024-01-31"},
        "list": [{"x": 1, "when": "2024-01-31"}, None, True, 31],
    }


def test_a_lone_surrogate_escape_is_refused_by_the_pure_python_parser_too() -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml('a: "\\ud800"\n', source=SOURCE, limits=SMALL, loader_class=PythonBoundedLoader)

    assert caught.value.problems == [
        f"{SOURCE}: invalid YAML at line 1, column 4: a value holds a lone surrogate escape (not a character)"
    ]


def test_a_lone_surrogate_in_text_given_directly_is_an_unacceptable_character() -> None:
    assert problems("daemons: [\ud800]\n") == [
        f"{SOURCE}: line 1, column 11: unacceptable character #xd800 in YAML"
    ]
