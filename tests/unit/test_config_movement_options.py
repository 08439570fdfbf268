"""Apply-time checks for the data-movement settings: modes, connector options, secrets."""

from __future__ import annotations

import pytest

from cp.config_file import ConfigError, parse_config_text

BASE = """
daemons: [{{name: edge}}]
connectors:
  - {{name: src, {source}}}
  - {{name: dst, {destination}}}
pipelines:
  - name: p
    source: {{connector: src, {source_end}}}
    destination: {{connector: dst, table: t}}
    daemon: edge
{pipeline}
"""


def problems(
    *,
    source: str = "kind: sqlite, path: /data/a.db",
    destination: str = "kind: sqlite, path: /data/b.db",
    source_end: str = "table: s",
    pipeline: str = "",
) -> list[str]:
    text = BASE.format(source=source, destination=destination, source_end=source_end, pipeline=pipeline)
    try:
        parse_config_text(text, source="f.yaml")
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"pipeline": "    mode: incremental"},
            "f.yaml: pipelines[0].cursor_column: required for mode incremental",
        ),
        ({"pipeline": "    mode: upsert"}, "f.yaml: pipelines[0].key_columns: required for mode upsert"),
        (
            {"pipeline": "    mode: append\n    cursor_column: id"},
            "f.yaml: pipelines[0].cursor_column: only used with mode incremental (mode is append)",
        ),
        (
            {"pipeline": "    mode: upsert\n    key_columns: [id, id]"},
            "f.yaml: pipelines[0].key_columns: duplicate column names",
        ),
        (
            {"pipeline": "    schema_drift: ignore"},
            "f.yaml: pipelines[0].schema_drift: Input should be 'add' or 'fail'",
        ),
        (
            {"destination": "kind: csv, path: /data/out.csv"},
            "f.yaml: pipelines[0].destination.connector:"
            " 'dst' is a csv connector, which can only be a source",
        ),
        (
            {"source": "kind: jsonl, path: /data/in/", "source_end": "query: select 1"},
            "f.yaml: pipelines[0].source.query: file sources take no query",
        ),
        (
            {"source": "kind: postgres, dsn: 'postgresql://app:hunter2@db/shop'"},
            "f.yaml: connectors[0].dsn: Value error, the password in dsn must be a secret reference"
            " (${env:NAME} or ${file:/path}), not a literal",
        ),
        (
            {"source": "kind: postgres, dsn: 'host=db user=app password=hunter2'"},
            "f.yaml: connectors[0].dsn: Value error, the password in dsn must be a secret reference"
            " (${env:NAME} or ${file:/path}), not a literal",
        ),
        (
            {"source": "kind: mysql, database: shop, password: hunter2"},
            "f.yaml: connectors[0].password: Value error, password must be a secret reference"
            " (${env:NAME} or ${file:/path}), not a literal",
        ),
        (
            {"source": "kind: csv, path: /data/in.csv, columns: {amount: money}"},
            "f.yaml: connectors[0].columns: Value error, column 'amount': unknown type 'money'",
        ),
    ],
)
def test_movement_settings_are_checked_at_apply_time(kwargs: dict[str, str], expected: str) -> None:
    assert problems(**kwargs) == [expected]


@pytest.mark.parametrize(
    "source",
    [
        "kind: postgres, dsn: 'postgresql://app:${env:PG_PASSWORD}@db:5432/shop'",
        "kind: postgres, dsn: 'host=db user=app password=${file:/run/secrets/pg}'",
        "kind: postgres, dsn: 'postgresql://app@db/shop', schema: sales",
        "kind: mysql, host: db, user: app, password: '${env:MYSQL_PASSWORD}', database: shop",
        "kind: csv, path: /data/in/, pattern: '*.csv', columns: {id: bigint, amount: 'decimal(12,2)'}",
    ],
)
def test_connectors_with_secret_references_are_accepted(source: str) -> None:
    assert problems(source=source) == []


def test_incremental_and_upsert_settings_are_kept_in_the_normalized_document() -> None:
    text = BASE.format(
        source="kind: sqlite, path: /data/a.db",
        destination="kind: sqlite, path: /data/b.db",
        source_end="table: s",
        pipeline=(
            "    mode: incremental\n    cursor_column: updated_at\n"
            "    key_columns: [id]\n    schema_drift: fail"
        ),
    )
    pipeline = parse_config_text(text, source="f.yaml")["pipelines"][0]
    assert (
        pipeline["mode"],
        pipeline["cursor_column"],
        pipeline["key_columns"],
        pipeline["schema_drift"],
    ) == (
        "incremental",
        "updated_at",
        ["id"],
        "fail",
    )


def test_a_file_source_needs_neither_table_nor_query() -> None:
    assert problems(source="kind: csv, path: /data/in/", source_end="pattern_is_in_the_connector: true") == [
        "f.yaml: pipelines[0].source.pattern_is_in_the_connector: unknown field"
    ]
    assert problems(source="kind: csv, path: /data/in/", source_end="table: null") == []
