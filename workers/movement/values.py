"""Encode typed values into JSON-able positions and back, and hash rows for boundary tracking."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from workers.movement.types import Row


def encode(value: Any) -> Any:
    """A JSON-able form of a cursor or key value that :func:`decode` turns back into the same type."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode()}
    raise TypeError(f"cannot encode a position value of type {type(value).__name__}")


def decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((tag, text),) = value.items()
    if tag == "decimal":
        return Decimal(text)
    if tag == "datetime":
        return datetime.fromisoformat(text)
    if tag == "date":
        return date.fromisoformat(text)
    if tag == "bytes":
        return base64.b64decode(text)
    raise ValueError(f"unknown position value tag {tag!r}")


def row_hash(row: Row) -> str:
    """A stable digest of a row's values, to recognize rows already loaded at a cursor boundary."""
    parts = [{"json": v} if isinstance(v, dict | list) else encode(v) for v in row]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
