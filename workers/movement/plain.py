"""Plain forms: stored values that a destination's text input reads as exactly the value Python's
conversion gives, so a source may hand them over unconverted (see ``Source.stored_columns``).

Python reads more forms than PostgreSQL does, and reads some differently: ``int``, ``float`` and
``Decimal`` take underscores; ``fromisoformat`` takes week dates, an hour without minutes, a comma
before the fraction, and truncates a seventh fractional digit that PostgreSQL rounds. So only the
common forms count as plain; a column of a batch with any other value is converted as usual.
Each check looks at a whole column at once, in C loops.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

#: digits as 9s: a value's shape
_SHAPE = str.maketrans("0123456789", "9999999999")
# ISO-8601 dates and date-times with seconds to microseconds and an optional UTC offset
_ISO_SHAPE = re.compile(r"9999-99-99(?:[T ]99:99(?::99(?:\.9{1,6})?)?)?(?:Z|[+-]99(?::?99)?)?")

Check = Callable[[Sequence[Any]], bool]


def _joined(texts: Sequence[Any], separator: str) -> str | None:
    try:
        return separator.join(texts)
    except TypeError:  # not all of them text
        return None


def iso(values: Sequence[Any]) -> bool:
    """Every value is text in a common ISO-8601 shape (the calendar is for the parsers to check)."""
    joined = _joined(values, "\n")
    if joined is None or joined.count("\n") != max(0, len(values) - 1):  # not text, or lines in a value
        return False
    shapes = set(joined.translate(_SHAPE).split("\n")) if values else set()
    return all(map(_ISO_SHAPE.fullmatch, shapes))


def _number(characters: str) -> Check:
    odd = re.compile(f"[^{characters}]")

    def plain(values: Sequence[Any]) -> bool:
        """Every value is an int, a float, or text with only the characters of a plain number (no
        NaN or Infinity, no spaces, no underscores)."""
        texts: Sequence[Any] = values
        joined = _joined(texts, "")  # all text, as a file's fields are
        if joined is None:
            texts = [v for v in values if type(v) is not int and type(v) is not float]
            joined = _joined(texts, "")
        return joined is not None and odd.search(joined) is None and "" not in texts

    return plain


integer = _number("0-9+-")
number = _number("0-9+.eE-")
