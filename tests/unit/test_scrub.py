"""Specification of the scrubber: no secret value, in any form, and no DSN credential survives it."""

from __future__ import annotations

import io
import json
import logging
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.scrub import MIN_FRAGMENT, ScrubbingFilter, dsn_secrets, forms, scrub

PASSWORDS = [
    "two words here",
    "user@evil.example",
    "a/b/c/secret",
    "hash#tag#value",
    "per%cent%41",
    "quo'te\"double",
    "ünïcødé-пароль-密码",
    "back\\slash\\path",
]


@pytest.mark.parametrize("password", PASSWORDS)
def test_every_spelling_of_a_secret_is_masked(password: str) -> None:
    spellings = [
        password,
        quote(password, safe=""),
        quote_plus(password),
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        repr(password)[1:-1],
        password.upper(),
    ]
    text = " | ".join(f"failed near {s!s} here" for s in spellings)

    out = scrub(text, secrets=[password])

    for spelling in spellings:
        assert spelling not in out
    assert out.count("failed near") == len(spellings)


@pytest.mark.parametrize(
    ("password", "message", "leaked"),
    [
        # libpq reads an unencoded space as the end of the value: the second word becomes a keyword
        ("first second-word", 'missing "=" after "second-word" in connection info string', "second"),
        # an unencoded "@" moves the rest of the password into the host name
        ("abc@evilhost", "failed to resolve host 'evilhost@127.0.0.1'", "evilhost"),
        ("abcd/efgh#ijkl", 'database "efgh" does not exist', "efgh"),
    ],
)
def test_a_piece_of_a_secret_that_a_driver_split_off_is_masked(
    password: str, message: str, leaked: str
) -> None:
    assert leaked not in scrub(message, secrets=[password])


def test_pieces_shorter_than_the_minimum_are_left_so_messages_stay_readable() -> None:
    assert MIN_FRAGMENT == 4
    assert scrub("role abc does not exist", secrets=["abc@defghij"]) == "role abc does not exist"
    assert scrub("host defghij is unknown", secrets=["abc@defghij"]) == "host *** is unknown"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://etl:hunter2@db:5432/shop", "postgresql://etl:***@db:5432/shop"),
        ("mysql+pymysql://root:p@ss@word@db/shop", "mysql+pymysql://root:***@db/shop"),
        ("mariadb://root:pw%20x@db/shop?ssl=1", "mariadb://root:***@db/shop?ssl=1"),
        (
            "postgresql://db/shop?user=a&password=hunter2&sslmode=require",
            "postgresql://db/shop?user=a&password=***&sslmode=require",
        ),
        (
            "postgresql://db/shop?sslpassword=k3y&password=a&password=b",
            "postgresql://db/shop?sslpassword=***&password=***&password=***",
        ),
        ("host=db password='two words' dbname=shop", "host=db password=*** dbname=shop"),
        ("host=db PASSWORD = hunter2 passfile=/home/etl/.pgpass", "host=db PASSWORD = *** passfile=***"),
        ('password authentication failed for user "etl"', 'password authentication failed for user "etl"'),
    ],
)
def test_credentials_in_any_connection_string_are_masked_without_knowing_them(
    text: str, expected: str
) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://etl:hun%40ter2@db/shop", {"hun%40ter2", "hun@ter2"}),
        ("postgresql://etl:p@ss@db/shop", {"p@ss"}),
        ("postgresql://db/shop?password=a&password=b", {"a", "b"}),
        ("host=db password='it\\'s me' sslpassword=k3y", {"'it\\'s me'", "it's me", "k3y"}),
        ("postgresql://etl@db/shop", set()),
    ],
)
def test_the_passwords_a_dsn_carries_are_found_in_every_form(dsn: str, expected: set[str]) -> None:
    assert dsn_secrets(dsn) == expected


def test_an_empty_secret_masks_nothing() -> None:
    assert forms("") == set()
    assert scrub("nothing to hide", secrets=[""]) == "nothing to hide"


# "*" is left out: the mask itself is made of it
PASSWORD_TEXT = st.text(min_size=1, max_size=40).filter(lambda p: "*" not in p)


@settings(max_examples=300, deadline=None)
@given(password=PASSWORD_TEXT, before=st.text(max_size=20), after=st.text(max_size=20))
def test_for_any_password_the_scrubbed_message_does_not_contain_it(
    password: str, before: str, after: str
) -> None:
    encoded = quote(password, safe="")
    message = f"{before}could not connect with {password} or {encoded} or {json.dumps(password)}{after}"

    out = scrub(message, secrets=[password])

    assert password not in out
    assert encoded not in out
    assert json.dumps(password)[1:-1] not in out


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(
        st.text(alphabet=st.characters(categories=["L", "N"]), min_size=4, max_size=12),
        min_size=2,
        max_size=4,
    ),
    sep=st.sampled_from([" ", "@", "/", "#", ":", "'"]),
)
def test_for_any_password_of_words_no_word_of_four_or_more_survives(words: list[str], sep: str) -> None:
    password = sep.join(words)

    out = scrub(f"error near {' and '.join(reversed(words))}", secrets=[password])

    for word in words:
        assert word not in out


def test_the_logging_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubbingFilter(lambda text: scrub(text, secrets=["hunter2 now"])))
    logger = logging.getLogger("tests.scrub")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("connect failed: %s", "password=hunter2 now")
        try:
            raise RuntimeError("dsn postgresql://etl:hunter2 now@db/shop")
        except RuntimeError:
            logger.exception("run failed with hunter2")
        logger.warning("stack", stack_info=True, extra={"x": "hunter2"})
    finally:
        logger.removeHandler(handler)

    written = stream.getvalue()
    assert "hunter2" not in written
    assert "RuntimeError" in written and "connect failed" in written
