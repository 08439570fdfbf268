"""File paths confined to allowed roots: resolved (symbolic links included), then compared.

Pure apart from reading the file system's links. A path is judged by where it really leads, so
neither ``..`` nor a symbolic link inside a root that points outside escapes; the resolved path is
what the connector then opens, so a link swapped in later than the check would have to be swapped
in the short moment before the open (see docs/security.md#data-plane-confinement).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_PATH_BYTES = 4096  # Linux's PATH_MAX: a longer path cannot be opened anyway
_SEPARATORS = re.compile(r"[:,]")


class PathRefused(ValueError):
    """A path outside the allowed roots, or one that cannot be judged; the message says why."""


def parse_roots(text: str, *, what: str) -> list[Path]:
    """Roots from a colon- or comma-separated setting; each must be absolute."""
    roots = []
    for part in (p.strip() for p in _SEPARATORS.split(text)):
        if part:
            roots.append(checked_root(part, what=what))
    return roots


def checked_root(text: str, *, what: str) -> Path:
    problem = _form_problem(text)
    if problem:
        raise PathRefused(f"{what}: root {text!r} {problem}")
    return Path(text)


def _form_problem(text: str) -> str | None:
    """Why ``text`` cannot be judged as a path at all, or None."""
    if "\x00" in text:
        return "contains a NUL byte"
    try:
        encoded = os.fsencode(text)
    except UnicodeError:
        return "is not a valid file name (unpaired surrogate characters)"
    if len(encoded) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if not text.startswith("/"):
        return "is not an absolute path"
    if ".." in text.split("/"):
        return "has a '..' segment"
    return None


def _resolved(path: str) -> str:
    """``path`` with every symbolic link followed; raises PathRefused for a link loop."""
    real = os.path.realpath(path)
    # realpath gives up silently on a loop and keeps the rest as written: any link left is one
    prefix = ""
    for part in real.split("/")[1:]:
        prefix = f"{prefix}/{part}"
        if os.path.islink(prefix):
            raise PathRefused(f"{path} cannot be resolved (a loop of symbolic links at {prefix})")
    return real


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class PathGuard:
    """The allowed roots of one daemon; ``confine`` turns a configured path into one to open."""

    roots: tuple[Path, ...]

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.roots) or "none"

    def confine(self, raw: str) -> Path:
        """``raw`` resolved, when it leads inside a root; PathRefused (saying why) otherwise."""
        problem = _form_problem(raw)
        if problem:
            raise PathRefused(f"path {raw!r} {problem}")
        resolved = _resolved(raw)
        if "${" in resolved:
            # connectors resolve secret references in their options: a link target must not add one
            raise PathRefused(f"path {raw} resolves to {resolved}, which holds '${{'")
        if not any(_inside(resolved, _resolved(str(root))) for root in self.roots):
            leads = "" if resolved == os.path.normpath(raw) else f" resolves to {resolved}, which"
            raise PathRefused(f"path {raw}{leads} is outside the allowed roots ({self.describe()})")
        return Path(resolved)


def inside(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it, compared as written (resolve both first)."""
    return _inside(path, root)


def opened_path(fd: int) -> str | None:
    """Where an open file really is, as the kernel says (None without /proc)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def symbolic_links(paths: Iterable[Path]) -> list[Path]:
    """Those of ``paths`` that are symbolic links."""
    return [p for p in paths if p.is_symlink()]
