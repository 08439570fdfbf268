"""Specification of the daemon's on-disk copy of its last applied configuration."""

from __future__ import annotations

import multiprocessing
import os
import random
import stat
import threading
from pathlib import Path

import pytest

from cp.protocol import ApplyConfig, ConnectorSpec, DesiredState, PipelineSpec
from workers.local_state import Applied, LocalState


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


def test_the_config_file_is_private_to_the_daemon_user_and_so_is_its_directory(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "daemons" / "edge-1")

    state.save(config(3))

    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.directory.stat().st_mode) == 0o700


def test_a_file_an_older_release_left_world_readable_is_made_private_when_loaded(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.save(config(3))
    state.path.chmod(0o644)

    assert state.load() == config(3)

    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600


@pytest.mark.parametrize("order", [(43, 42), (42, 43)])
def test_an_older_version_never_replaces_a_newer_one(tmp_path: Path, order: tuple[int, int]) -> None:
    state = LocalState(tmp_path)

    results = [state.apply(config(version)) for version in order]

    assert state.load() == config(43)
    assert [r.version for r in results] == [order[0], 43]
    assert [r.ignored for r in results] == [False, order == (43, 42)]


def test_the_same_version_pushed_again_is_applied_again(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.apply(config(7))

    assert state.apply(config(7)) == Applied(version=7, ignored=False)


def _apply_many(directory: str, versions: list[int]) -> None:
    state = LocalState(Path(directory))
    for version in versions:
        state.apply(config(version))


def test_concurrent_saves_from_threads_and_processes_never_collide_and_end_on_the_newest(
    tmp_path: Path,
) -> None:
    versions = list(range(1, 41))
    random.Random(9).shuffle(versions)
    parts = [versions[i::4] for i in range(4)]
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_apply_many, args=(str(tmp_path), part)) for part in parts[:2]]
    threads = [threading.Thread(target=_apply_many, args=(str(tmp_path), part)) for part in parts[2:]]
    for worker in [*processes, *threads]:
        worker.start()
    for thread in threads:
        thread.join(timeout=120)
    for process in processes:
        process.join(timeout=120)

    assert [p.exitcode for p in processes] == [0, 0]
    assert LocalState(tmp_path).load() == config(40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["applied-config.json", "applied-config.lock"]
