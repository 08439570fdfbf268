"""The one error a configuration file can cause."""

from __future__ import annotations

import re

MAX_PROBLEMS = 100  # a broken generated file should not print a million lines
MAX_PROBLEM_LENGTH = 500  # nor one line of a megabyte
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # all that str.splitlines splits on


class ConfigError(ValueError):
    """A configuration file with one or more problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        problems = [_one_line(p) for p in problems]
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        super().__init__("\n".join(problems))
        self.problems = problems


def _one_line(problem: str) -> str:
    problem = LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], problem)
    return problem if len(problem) <= MAX_PROBLEM_LENGTH else problem[: MAX_PROBLEM_LENGTH - 3] + "..."


def shown(value: object, *, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters so that one problem stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
