"""The one error a configuration file can cause."""

from __future__ import annotations

MAX_PROBLEMS = 100  # a broken generated file should not print a million lines


class ConfigError(ValueError):
    """A configuration file with one or more problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        super().__init__("\n".join(problems))
        self.problems = problems


def shown(value: object, *, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters so that one problem stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
