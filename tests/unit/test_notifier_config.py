"""The ``notifiers`` section: validated at apply with one-line errors naming the path."""

from __future__ import annotations

from typing import Any

import pytest

from cp.config_diff import diff_documents
from cp.config_file import ConfigError

from .conftest import validate

HOOK = {
    "name": "ops-hook",
    "kind": "webhook",
    "url": "https://hooks.example/alerts",
    "secret": "${env:HOOK_SECRET}",
}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return caught.value.problems


def with_notifiers(raw_config: dict[str, Any], *notifiers: dict[str, Any]) -> dict[str, Any]:
    return {**raw_config, "notifiers": list(notifiers)}


def test_the_documented_example_validates_and_is_normalized_with_defaults(raw_config: dict[str, Any]) -> None:
    doc = validate(
        with_notifiers(
            raw_config,
            {**HOOK, "headers": {"X-Team": "data"}, "timeout": "10s"},
            {"name": "audit-log", "kind": "log"},
            {"name": "chat", "kind": "apprise", "url": "${env:APPRISE_URL}"},
        )
    )
    assert doc["notifiers"] == [
        {"name": "audit-log", "kind": "log", "level": "warning"},
        {"name": "chat", "kind": "apprise", "url": "${env:APPRISE_URL}", "timeout": 10.0},
        {**HOOK, "headers": {"X-Team": "data"}, "timeout": 10.0, "allow_insecure": False},
    ]


def test_a_file_without_notifiers_keeps_the_document_it_had(raw_config: dict[str, Any]) -> None:
    assert "notifiers" not in validate(raw_config)


def test_a_file_with_only_notifiers_is_not_empty() -> None:
    assert [n["name"] for n in validate({"notifiers": [HOOK]})["notifiers"]] == ["ops-hook"]


def test_adding_a_notifier_shows_in_the_diff(raw_config: dict[str, Any]) -> None:
    before = validate(raw_config)
    after = validate(with_notifiers(raw_config, HOOK))
    assert diff_documents(before, after) == ["+ notifier ops-hook"]


@pytest.mark.parametrize(
    ("notifier", "expected"),
    [
        (
            {**HOOK, "secret": "hunter2"},
            "notifiers[0].secret: Value error, secret must be a secret reference"
            " (${env:NAME} or ${file:/path}), not a literal",
        ),
        (
            {**HOOK, "url": "http://hooks.example/alerts"},
            "notifiers[0]: Value error, url: http is allowed only to 127.0.0.1 or localhost;"
            " use https, or set allow_insecure: true",
        ),
        (
            {**HOOK, "url": "https://user:pw@hooks.example/"},
            "notifiers[0]: Value error, url: a password in the URL is not allowed"
            " (put credentials in headers)",
        ),
        (
            {**HOOK, "url": "ftp://hooks.example/"},
            "notifiers[0]: Value error, url: 'ftp://hooks.example/' is not an http(s) URL",
        ),
        (
            {**HOOK, "headers": {"Authorization": "Bearer abc"}},
            "notifiers[0].headers: Value error, header Authorization must be a secret reference"
            " (${env:NAME} or ${file:/path}), not a literal",
        ),
        (
            {**HOOK, "headers": {"webhook-id": "x"}},
            "notifiers[0].headers: Value error, header webhook-id is set by the delivery itself",
        ),
        ({**HOOK, "timeout": "2h"}, "notifiers[0].timeout: Input should be less than or equal to 60"),
        (
            {**HOOK, "timeout": "soon"},
            "notifiers[0].timeout: Input should be a valid number, unable to parse string as a number",
        ),
        ({**HOOK, "retries": 3}, "notifiers[0].retries: unknown field"),
        (
            {"name": "chat", "kind": "apprise", "url": "slack://token-a/token-b"},
            "notifiers[0].url: Value error, url (an Apprise URL holds credentials) must be a secret reference"
            " (${env:NAME} or ${file:/path}), not a literal",
        ),
        (
            {"name": "x", "kind": "pager"},
            "notifiers[0]: Input tag 'pager' found using 'kind' does not match any of the expected tags:"
            " 'webhook', 'log', 'apprise'",
        ),
        ({"name": "bad name", "kind": "log"}, "notifiers[0].name: invalid name 'bad name'"),
    ],
    ids=[
        "literal-secret",
        "plain-http-elsewhere",
        "password-in-url",
        "not-http",
        "literal-credential-header",
        "reserved-header",
        "timeout-too-long",
        "timeout-not-a-duration",
        "unknown-field",
        "literal-apprise-url",
        "unknown-kind",
        "bad-name",
    ],
)
def test_a_bad_notifier_is_refused_with_one_line_naming_its_path(
    raw_config: dict[str, Any], notifier: dict[str, Any], expected: str
) -> None:
    found = problems(with_notifiers(raw_config, notifier))
    assert len(found) == 1 and found[0].startswith(f"mycelial.yaml: {expected}"), found


def test_plain_http_is_allowed_to_localhost_or_when_asked_for(raw_config: dict[str, Any]) -> None:
    local = {**HOOK, "url": "http://127.0.0.1:9000/hook"}
    insecure = {**HOOK, "name": "lan", "url": "http://hooks.lan/", "allow_insecure": True}
    assert len(validate(with_notifiers(raw_config, local, insecure))["notifiers"]) == 2


def test_a_credential_header_may_be_a_reference(raw_config: dict[str, Any]) -> None:
    hook = {**HOOK, "headers": {"Authorization": "${env:HOOK_TOKEN}"}}
    assert validate(with_notifiers(raw_config, hook))["notifiers"][0]["headers"] == {
        "Authorization": "${env:HOOK_TOKEN}"
    }


def test_two_notifiers_of_one_name_are_refused(raw_config: dict[str, Any]) -> None:
    assert problems(with_notifiers(raw_config, HOOK, {"name": "ops-hook", "kind": "log"})) == [
        "mycelial.yaml: notifiers[1].name: duplicate name 'ops-hook'"
    ]


def test_too_many_headers_are_refused(raw_config: dict[str, Any]) -> None:
    hook = {**HOOK, "headers": {f"X-H{i}": "v" for i in range(21)}}
    (found,) = problems(with_notifiers(raw_config, hook))
    assert found.startswith("mycelial.yaml: notifiers[0].headers: Dictionary should have at most 20 items")
