"""The CLI's output layer: tables for people, one JSON document for scripts, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TIMEOUT = 3


class CliError(Exception):
    """An error the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, *, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


Column = tuple[str, Callable[[dict[str, Any]], Any]]


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], *, empty: str) -> None:
    # piped output keeps whole values instead of wrapping them at 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=400)
    if not rows:
        console.print(empty)
        return
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for title, _ in columns:
        table.add_column(title)
    for row in rows:
        table.add_row(*("" if (v := get(row)) is None else str(v) for _, get in columns))
    console.print(table)


def print_lines(lines: Sequence[str]) -> None:
    """Lines exactly as given, for other programs to read (no wrapping, no highlighting)."""
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def info(message: str) -> None:
    Console(soft_wrap=True).print(message, highlight=False, markup=False)


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def note(message: str) -> None:
    """A line for the person at the terminal, on stderr, so stdout stays what a script reads."""
    sys.stderr.write(f"{message}\n")


def error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
