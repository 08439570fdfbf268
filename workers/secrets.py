"""Resolve ``${env:NAME}`` and ``${file:/path}`` references on the daemon, at run time only, and
remember every value resolved so that errors and log lines can be scrubbed of it.

The registry is per process on purpose: a connector resolves its options deep inside a job, while
the text to scrub (an error, a log line from any thread or library) appears anywhere; every value
this process ever resolved is masked everywhere, a superset of one job's values.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from workers.scrub import ScrubbingFilter, dsn_secrets, scrub

REFERENCE = re.compile(r"\$\{(env|file):([^}]+)\}")
MAX_REMEMBERED = 10_000  # distinct values; the oldest are forgotten first past this

_lock = threading.Lock()
_known: dict[str, None] = {}  # insertion-ordered set
_frozen: frozenset[str] = frozenset()


class SecretError(LookupError):
    """A reference that cannot be resolved; the message names the reference, never a value."""


def remember(values: Iterable[str]) -> None:
    """Add secret values to the ones every scrubbed text is cleaned of."""
    global _frozen
    with _lock:
        new = [v for v in values if v and v not in _known]
        if not new:
            return
        for value in new:
            _known[value] = None
        while len(_known) > MAX_REMEMBERED:
            del _known[next(iter(_known))]
        _frozen = frozenset(_known)


def known() -> frozenset[str]:
    return _frozen


def forget_all() -> None:
    """Forget every remembered value (tests: one test's secrets must not mask another's text)."""
    global _frozen
    with _lock:
        _known.clear()
        _frozen = frozenset()


def scrubbed(text: str) -> str:
    """``text`` cleaned of every value this process resolved and of connection-string credentials."""
    return scrub(text, secrets=_frozen)


def resolve(value: str) -> str:
    """``value`` with its references replaced; each resolved value (and any password in the
    resulting connection string) is remembered for scrubbing before it is returned."""
    resolved: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        kind, target = match.group(1), match.group(2)
        if kind == "env":
            if target not in os.environ:
                raise SecretError(f"environment variable {target} is not set")
            secret = os.environ[target]
        else:
            try:
                secret = Path(target).read_text(encoding="utf-8").rstrip("\n")
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
                raise SecretError(f"cannot read secret file {target}: {why}") from None
        resolved.append(secret)
        return secret

    result = REFERENCE.sub(substitute, value)
    if resolved:
        remember([*resolved, *dsn_secrets(result)])
    return result


def install_log_scrubbing(*_: Any, logger: logging.Logger | None = None, **__: Any) -> None:
    """Put a scrubbing filter on every handler of ``logger`` (default: the root logger).

    Its signature fits Celery's ``after_setup_logger`` / ``after_setup_task_logger`` signals.
    """
    target = logger if logger is not None else logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, ScrubbingFilter) for f in handler.filters):
            handler.addFilter(ScrubbingFilter(scrubbed))
