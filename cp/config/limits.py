"""Bounds on a configuration file, before and while it is parsed."""

from __future__ import annotations

from dataclasses import dataclass

from cp.settings import Settings


@dataclass(frozen=True)
class ConfigLimits:
    """How big a configuration may be: on disk, once aliases are expanded, and how deep."""

    max_bytes: int
    max_nodes: int
    max_text: int
    max_depth: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConfigLimits:
        return cls(
            max_bytes=settings.config_max_bytes,
            max_nodes=settings.config_max_nodes,
            max_text=settings.config_max_text,
            max_depth=settings.config_max_depth,
        )

    @classmethod
    def defaults(cls) -> ConfigLimits:
        """The limits of an environment that sets none of them."""
        return cls.from_settings(Settings.model_construct())
