"""Resolve ``${env:NAME}`` and ``${file:/path}`` references on the daemon, at run time only."""

from __future__ import annotations

import os
import re
from pathlib import Path

REFERENCE = re.compile(r"\$\{(env|file):([^}]+)\}")


class SecretError(LookupError):
    """A reference that cannot be resolved; the message names the reference, never a value."""


def resolve(value: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        kind, target = match.group(1), match.group(2)
        if kind == "env":
            if target not in os.environ:
                raise SecretError(f"environment variable {target} is not set")
            return os.environ[target]
        try:
            return Path(target).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise SecretError(f"cannot read secret file {target}: {exc.strerror}") from None

    return REFERENCE.sub(substitute, value)
