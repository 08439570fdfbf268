"""Property-based fuzzing of the configuration parser: any input is a document or a ConfigError."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cp.config.limits import ConfigLimits
from cp.config.safe_yaml import BoundedLoader, PythonBoundedLoader, load_yaml
from cp.config_file import ConfigError, load_config_file, parse_config_text

LIMITS = ConfigLimits(max_bytes=4_000, max_nodes=300, max_text=2_000, max_depth=10)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: pieces of YAML that reach the parser's corners: structure, anchors, merges, tags, escapes
TOKENS = [
    *["daemons", "connectors", "pipelines", "name", "kind", "sqlite", "path", "source", "destination"],
    *["table", "connector", "schedule", "timezone", "labels", "daemon", "edge-1", "_mycelial_x"],
    *[":", ": ", " ", "\n", "  ", "    ", "- ", "[", "]", "{", "}", ", ", "? ", "'", '"', "# c", "\t"],
    *["&a ", "*a", "&b ", "*b", "<<: ", "<<: *a", "---\n", "...\n", "|\n  ", ">\n  ", "%YAML 1.1\n"],
    *["!!str ", "!!int ", "!!binary ", "!!set ", "!!omap ", "!!timestamp ", "!!python/object ", "!x "],
    *["1", "-1", "0x1F", "0o7", "1_000", "1:30", "1e400", ".nan", ".inf", "~", "null", "yes", "2024-01-31"],
    *['"\\ud800"', '"\\x00"', '"\\U0010FFFF"', "\x00", "\x07", "\ufeff", "é", "\u2028", "9" * 5_000],
]


def yaml_like() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)


def assert_document_or_config_error(text: str, *, limits: ConfigLimits = LIMITS) -> None:
    try:
        document = parse_config_text(text, source="fuzz.yaml", limits=limits, allow_empty=True)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError always says what is wrong"
        assert all(len(p.splitlines()) == 1 for p in exc.problems), exc.problems
        return
    assert set(document) == {"daemons", "connectors", "pipelines"}
    json.dumps(document, allow_nan=False)  # storable and sendable as it is


def expanded_size(value: Any, depth: int = 1) -> tuple[int, int, int]:
    """(nodes, characters of scalars, depth) of ``value`` with every shared object counted again."""
    if isinstance(value, dict):
        children = [expanded_size(item, depth + 1) for pair in value.items() for item in pair]
    elif isinstance(value, list):
        children = [expanded_size(item, depth + 1) for item in value]
    else:
        return 1, len(value) if isinstance(value, str) else 0, depth
    return (
        1 + sum(c[0] for c in children),
        sum(c[1] for c in children),
        max([depth, *(c[2] for c in children)]),
    )


@FUZZ
@given(st.text(st.characters(exclude_categories=()), max_size=500))
def test_any_text_is_a_document_or_a_config_error(text: str) -> None:
    assert_document_or_config_error(text)


@FUZZ
@given(yaml_like())
def test_any_yaml_like_text_is_a_document_or_a_config_error(text: str) -> None:
    assert_document_or_config_error(text)


@pytest.mark.parametrize("loader", [BoundedLoader, PythonBoundedLoader], ids=["default", "pure-python"])
@FUZZ
@given(text=yaml_like())
def test_whatever_loads_stays_within_the_limits(loader: Any, text: str) -> None:
    try:
        value = load_yaml(text, source="fuzz.yaml", limits=LIMITS, loader_class=loader)
    except ConfigError:
        return
    nodes, characters, depth = expanded_size(value)
    # a value is one node more than the YAML it came from at most (an empty stream is None)
    assert nodes <= LIMITS.max_nodes
    assert characters <= LIMITS.max_text
    assert depth <= LIMITS.max_depth


@FUZZ
@given(st.binary(max_size=500))
def test_any_bytes_in_a_file_are_a_document_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_bytes(data)
    try:
        load_config_file(path, limits=LIMITS, allow_empty=True)
    except ConfigError as exc:
        assert all(p.startswith(f"{path}: ") and len(p.splitlines()) == 1 for p in exc.problems), exc.problems


# --- documents of the right shape with hostile values -------------------------------------

SCALARS = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(["_mycelial_stage_x", "public.orders", '"Orders"', "Europe/Berlin", "* * * * *"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def endpoint() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"connector": st.sampled_from(["shop", "warehouse", "nope"])},
        optional={
            "table": st.one_of(SCALARS, st.sampled_from(["orders", "ORDERS", "main.orders"])),
            "query": VALUES,
        },
    )


PIPELINE = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["orders", "stock"]), st.text(max_size=70)),
        "source": endpoint(),
        "destination": endpoint(),
    },
    optional={
        "mode": st.sampled_from(["replace", "append", "incremental", "upsert", "merge"]),
        "schedule": st.one_of(
            st.text(max_size=30), st.sampled_from(["0 * * * *", "0 0 31 2 *", "*/0 * * * *", "* * * * * * *"])
        ),
        "timezone": st.one_of(
            st.text(max_size=300), st.sampled_from(["UTC", "../etc", "/etc/passwd", "Europe/" + "x" * 300])
        ),
        "daemon": st.sampled_from(["edge-1", "edge-2"]),
        "labels": VALUES,
        "cursor_column": VALUES,
        "key_columns": VALUES,
        "batch_size": VALUES,
        "retries": VALUES,
        "timeout": VALUES,
    },
)
CONNECTOR = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["shop", "warehouse"]),
        "kind": st.sampled_from(["sqlite", "postgres", "mysql", "csv", "oracle"]),
    },
    optional={
        "path": VALUES,
        "dsn": VALUES,
        "schema": VALUES,
        "database": VALUES,
        "host": VALUES,
        "port": VALUES,
    },
)
DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "daemons": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["edge-1", "edge-2"])}, optional={"labels": VALUES}
            ),
            max_size=2,
        ),
        "connectors": st.lists(CONNECTOR, max_size=3),
        "pipelines": st.lists(PIPELINE, max_size=3),
    },
)


@FUZZ
@given(DOCUMENT)
def test_a_well_shaped_document_with_any_values_is_a_document_or_a_config_error(raw: dict[str, Any]) -> None:
    assert_document_or_config_error(
        yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), limits=ConfigLimits.defaults()
    )
