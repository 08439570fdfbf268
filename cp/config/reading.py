"""A configuration file's bytes, bounded before parsing, and its text, strictly UTF-8."""

from __future__ import annotations

from pathlib import Path

from cp.config.errors import ConfigError


def read_bounded(path: Path, *, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of ``path``; a longer file (or an endless device) is an error."""
    try:
        with path.open("rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read file: {exc.strerror or exc}"]) from None
    if len(data) > max_bytes:
        raise ConfigError(
            [f"{path}: file is larger than {max_bytes} bytes (the limit MYCELIAL_CONFIG_MAX_BYTES)"]
        )
    return data


def decode_utf8(data: bytes, *, source: str) -> str:
    """The text of ``data``, or an error naming the byte offset of the first invalid byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [
                f"{source}: not UTF-8 text: invalid byte 0x{data[exc.start]:02x} "
                f"at byte offset {exc.start} (line {line})"
            ]
        ) from None
