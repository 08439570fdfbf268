"""Human-readable differences between two normalized configuration documents."""

from __future__ import annotations

from typing import Any

SECTIONS = (
    ("daemons", "daemon"),
    ("connectors", "connector"),
    ("pipelines", "pipeline"),
    ("notifiers", "notifier"),
)


def diff_documents(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """One line per added (+), removed (-) or changed (~) item, in section order."""
    lines: list[str] = []
    for section, noun in SECTIONS:
        before = {item["name"]: item for item in (old or {}).get(section, [])}
        after = {item["name"]: item for item in new.get(section, [])}
        for name in sorted(before.keys() - after.keys()):
            lines.append(f"- {noun} {name}")
        for name in sorted(after.keys() - before.keys()):
            lines.append(f"+ {noun} {name}")
        for name in sorted(before.keys() & after.keys()):
            changes = _changed_fields(before[name], after[name])
            if changes:
                lines.append(f"~ {noun} {name}: " + "; ".join(changes))
    return lines


def _changed_fields(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    changes: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict) and key != "labels":
            changes += _changed_fields(old, new, prefix=f"{prefix}{key}.")
        else:
            changes.append(f"{prefix}{key} {_show(old)} -> {_show(new)}")
    return changes


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value)
