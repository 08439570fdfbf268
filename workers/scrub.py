"""Remove secret values and connection-string credentials from text that may quote them.

Pure: the caller passes the secret values (see ``workers.secrets`` for the daemon's registry). A
value is masked whole in every form a driver, a JSON encoder or ``repr`` may give it (plain,
percent-encoded, JSON- and backslash-escaped, quote-doubled), case-insensitively. A driver that
parses a connection string can also split a value at a delimiter (a space, ``@``, ``/``, ``:``…)
and quote only a piece of it, so every piece of a value between characters that are not letters
or digits is masked too when it has at least ``MIN_FRAGMENT`` characters; shorter pieces are left,
or ordinary words of every message would go. Independently of any value, credentials in anything
that looks like a connection string are masked: the password in ``scheme://user:password@``, and
the values of ``password=``, ``sslpassword=`` and ``passfile=`` (libpq keyword strings and URL
query parameters alike).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

MASK = "***"
MIN_FRAGMENT = 4
_PIECES = re.compile(r"[^\W_]+")  # runs of letters and digits, in any script

# scheme://user:PASSWORD@ — greedy up to the last "@" of the token, so an unencoded "@" is covered
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)(\S*)@")
_KEY_VALUE = re.compile(
    r"""(\b(?:ssl)?password|\bpassfile)(\s*=\s*)('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&;,)]*)""",
    re.IGNORECASE,
)
_KEYWORD_PASSWORD = re.compile(r"""\b(?:ssl)?password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)""", re.IGNORECASE)


def forms(value: str) -> set[str]:
    """Every spelling of ``value`` that may show up in a message, and its long-enough pieces."""
    if not value:
        return set()
    spelled = {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        unquote(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        repr(value.encode("utf-8", "backslashreplace"))[2:-1],
        value.replace("\\", "\\\\").replace("'", "\\'"),
        value.replace("'", "''"),
    }
    pieces = {p for s in spelled for p in _PIECES.findall(s) if len(p) >= MIN_FRAGMENT}
    return {s for s in spelled | pieces if s}


def dsn_secrets(dsn: str) -> set[str]:
    """The password values a connection string carries: URL userinfo, query parameters, keywords."""
    found: set[str] = set()
    if "://" in dsn:
        for match in _URL_PASSWORD.finditer(dsn):
            found.update({match.group(2), unquote(match.group(2))})
        try:
            parts = urlsplit(dsn)
            found.update(v for k, v in parse_qsl(parts.query) if k.lower() in {"password", "sslpassword"})
            if parts.password:
                found.update({parts.password, unquote(parts.password)})
        except ValueError:
            pass  # malformed: the pattern above took what it could
        return {s for s in found if s}
    for match in _KEYWORD_PASSWORD.finditer(dsn):
        raw = match.group(1)
        found.add(raw)
        if raw.startswith("'"):
            found.add(re.sub(r"\\(.)", r"\1", raw[1:-1]))
    return {s for s in found if s}


@lru_cache(maxsize=64)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    spelled = {form for secret in secrets for form in forms(secret)}
    if not spelled:
        return None
    alternatives = sorted(spelled, key=len, reverse=True)  # the longest form wins where forms overlap
    return re.compile("|".join(re.escape(s) for s in alternatives), re.IGNORECASE)


def scrub(text: str, *, secrets: Iterable[str] = ()) -> str:
    """``text`` without any form of ``secrets`` and without connection-string credentials."""
    pattern = _pattern(frozenset(s for s in secrets if s))
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


class ScrubbingFilter(logging.Filter):
    """A handler filter that scrubs each record's message, exception text and stack before output."""

    def __init__(self, scrubber: Callable[[str], str]) -> None:
        super().__init__()
        self._scrub = scrubber
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what the record holds, scrubbed
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self._scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        return True
