"""Specification of secret references resolved on the daemon at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.secrets import SecretError, resolve


def test_an_env_reference_resolves_to_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_PASSWORD", "s3cret")

    assert resolve("${env:PG_PASSWORD}") == "s3cret"


def test_a_file_reference_resolves_to_the_file_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "pg"
    secret.write_text("s3cret\n", encoding="utf-8")

    assert resolve(f"${{file:{secret}}}") == "s3cret"


def test_references_inside_a_longer_value_are_each_substituted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_DIR", "/srv/data")
    name = tmp_path / "name"
    name.write_text("shop", encoding="utf-8")

    assert resolve(f"${{env:DATA_DIR}}/${{file:{name}}}.db") == "/srv/data/shop.db"


def test_a_value_without_references_is_returned_unchanged() -> None:
    assert resolve("demo/shop.db") == "demo/shop.db"


def test_a_missing_variable_is_a_secret_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_PASSWORD", raising=False)

    with pytest.raises(SecretError, match="^environment variable PG_PASSWORD is not set$"):
        resolve("postgres://etl:${env:PG_PASSWORD}@db/shop")


def test_an_unreadable_file_is_a_secret_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent"

    with pytest.raises(SecretError, match=f"^cannot read secret file {missing}: No such file or directory$"):
        resolve(f"${{file:{missing}}}")


def test_a_secret_error_never_shows_other_resolved_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_USER", "etl-user-value")
    monkeypatch.delenv("PG_PASSWORD", raising=False)

    with pytest.raises(SecretError) as caught:
        resolve("${env:PG_USER}:${env:PG_PASSWORD}")

    assert "etl-user-value" not in str(caught.value)
