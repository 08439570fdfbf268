"""The daemon's last applied configuration, kept on local disk to survive control-plane outages."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cp.protocol import ApplyConfig


class LocalState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "applied-config.json"

    def load(self) -> ApplyConfig | None:
        """The stored config, or None when there is none or it cannot be read."""
        try:
            return ApplyConfig.model_validate_json(self.path.read_bytes())
        except (OSError, ValueError):
            return None

    def save(self, config: ApplyConfig) -> None:
        """Write atomically: a crash leaves either the old file or the new one, never half."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(config.model_dump(mode="json"), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
