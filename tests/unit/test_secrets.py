"""Specification of secret references resolved on the daemon at run time."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from cp.protocol import ConnectorSpec, PipelineSpec, RunJob
from workers.confinement.paths import PathGuard
from workers.confinement.policy import Confinement
from workers.jobs import Outcome, Report, execute
from workers.secrets import SecretError, install_log_scrubbing, resolve


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


def test_a_value_resolved_in_a_sqlite_path_does_not_show_in_the_run_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_DIR", "/srv/hidden-k9x2w7")
    source = ConnectorSpec(name="shop", kind="sqlite", options={"path": "${env:SHOP_DIR}/shop.db"})
    sink = ConnectorSpec(name="out", kind="sqlite", options={"path": str(tmp_path / "out.db")})
    job = RunJob(
        run_key="r1",
        attempt=1,
        pipeline=PipelineSpec(
            name="p", source=source, source_table="t", destination=sink, destination_table="t"
        ),
    )
    sent: list[Outcome] = []

    allowed = Confinement(paths=PathGuard((tmp_path, Path("/srv"))))
    outcome = execute(
        job, home=tmp_path, confinement=allowed, report=Report(sent.append), should_stop=lambda: False
    )

    assert outcome.state == "failed" and "does not exist" in str(outcome.error)
    assert "hidden-k9x2w7" not in str(outcome.error)
    assert all("hidden-k9x2w7" not in str(o.error) for o in sent)


def test_the_daemon_log_handlers_scrub_every_value_resolved_in_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_PASSWORD", "tango-v7q1 uniform-z3")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.secrets.daemon")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_log_scrubbing(logger=logger)
        install_log_scrubbing(logger=logger)  # once is enough: a second call adds nothing
        resolve("${env:API_PASSWORD}")
        logger.error("driver said: bad password %r near uniform-z3", "tango-v7q1 uniform-z3")
    finally:
        logger.removeHandler(handler)

    assert len(handler.filters) == 1
    assert "driver said: bad password" in stream.getvalue()
    assert "tango" not in stream.getvalue() and "uniform" not in stream.getvalue()
