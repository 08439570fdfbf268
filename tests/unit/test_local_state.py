"""Specification of the daemon's on-disk copy of its last applied configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cp.protocol import ApplyConfig, ConnectorSpec, DesiredState, PipelineSpec
from workers.local_state import LocalState


def config(version: int) -> ApplyConfig:
    sqlite = ConnectorSpec(name="shop", kind="sqlite", options={"path": "${env:SHOP_DB}"})
    pipeline = PipelineSpec(
        name="orders", source=sqlite, source_table="orders", destination=sqlite, destination_table="copy"
    )
    state = DesiredState(daemon="edge-1", labels={"site": "berlin"}, pipelines=[pipeline])
    return ApplyConfig(version=version, checksum=f"sum-{version}", state=state)


def test_a_saved_config_loads_back_equal(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "state")

    state.save(config(3))

    assert LocalState(tmp_path / "state").load() == config(3)


def test_nothing_is_loaded_before_anything_was_saved(tmp_path: Path) -> None:
    assert LocalState(tmp_path).load() is None


def test_a_corrupt_file_loads_as_nothing(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.path.write_text('{"version": 3, "checks', encoding="utf-8")

    assert state.load() is None


def test_saving_again_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.save(config(3))

    state.save(config(4))

    assert state.load() == config(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["applied-config.json"]


def test_a_save_that_fails_midway_leaves_the_previous_config_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = LocalState(tmp_path)
    state.save(config(3))

    def disk_gone(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_gone)
    with pytest.raises(OSError):
        state.save(config(4))
    monkeypatch.undo()

    assert state.load() == config(3)
