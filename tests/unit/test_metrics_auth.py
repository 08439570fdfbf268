"""Who may scrape /metrics: basic auth or a bearer token read from files, compared in constant time."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cp.metrics.server import AuthFileError, MetricsAuth, load_auth


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_without_credentials_configured_every_request_is_served() -> None:
    assert MetricsAuth().allows(None)


def test_a_bearer_token_must_match_exactly(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    auth = load_auth(basic_file=None, bearer_file=tmp_path / "token")
    assert auth.allows("Bearer s3cret-token")
    for header in (
        None,
        "",
        "Bearer s3cret",
        "Bearer s3cret-token2",
        basic("s3cret-token"),
        "Token s3cret-token",
    ):
        assert not auth.allows(header)


def test_basic_auth_must_match_user_and_password(tmp_path: Path) -> None:
    (tmp_path / "basic").write_text("prom:pa55\n")
    auth = load_auth(basic_file=tmp_path / "basic", bearer_file=None)
    assert auth.allows(basic("prom:pa55"))
    for header in (basic("prom:pa56"), basic("other:pa55"), "Basic !!notbase64", "Bearer prom:pa55"):
        assert not auth.allows(header)


@pytest.mark.parametrize(
    ("content", "problem"),
    [("", "empty"), ("no-colon", "expected user:password"), ("x" * 5000, "longer than")],
    ids=["empty", "no-colon", "huge"],
)
def test_an_unusable_credentials_file_is_refused_without_echoing_it(
    tmp_path: Path, content: str, problem: str
) -> None:
    (tmp_path / "basic").write_text(content)
    with pytest.raises(AuthFileError, match=problem) as caught:
        load_auth(basic_file=tmp_path / "basic", bearer_file=None)
    assert "no-colon" not in str(caught.value) or problem != "expected user:password"


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match="bearer token file .*missing"):
        load_auth(basic_file=None, bearer_file=tmp_path / "missing")
