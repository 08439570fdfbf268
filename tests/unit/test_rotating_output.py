"""Process output under the home rotates by size: a file never grows past its limit (unless one
line alone is longer), lines are never split between files, and the number of files is bounded."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from cp.cli.rotating_output import ChildOutput, RotatingFile, Rotation
from cp.cli.supervisor import Child, Stack

ROTATION = Rotation(max_bytes=64 * 1024, backups=3)


def files_of(path: Path) -> list[Path]:
    """The current file and its backups, oldest first."""
    backups = sorted(path.parent.glob(f"{path.name}.*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, path]


def lines_of(path: Path) -> list[str]:
    return [line for p in files_of(path) for line in p.read_text().splitlines()]


def test_writing_past_the_limit_rotates_and_keeps_the_newest_lines_in_order(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    out = RotatingFile(path, ROTATION)
    written = [f"line {n:06d} " + "x" * 90 + "\n" for n in range(10_000)]  # about 1 MB
    for line in written:
        out.write(line.encode())
    out.close()

    files = files_of(path)
    assert [p.name for p in files] == ["worker.log.3", "worker.log.2", "worker.log.1", "worker.log"]
    assert all(p.stat().st_size <= ROTATION.max_bytes for p in files)
    kept = lines_of(path)
    assert len(kept) < len(written)  # the oldest went with the oldest file
    assert kept == [line.rstrip("\n") for line in written[-len(kept) :]]


def test_two_writers_of_one_file_rotate_it_together_and_lose_no_kept_line(tmp_path: Path) -> None:
    # a restarted child's new output, while its previous run's leftover still writes the old pipe
    path = tmp_path / "daemon-local.log"
    many = Rotation(max_bytes=64 * 1024, backups=50)
    old, new = RotatingFile(path, many), RotatingFile(path, many)
    written = []
    for n in range(6_000):
        line = f"{'old' if n % 2 else 'new'} {n:06d} " + "z" * 80 + "\n"
        (old if n % 2 else new).write(line.encode())
        written.append(line.rstrip("\n"))
    old.close()
    new.close()

    files = files_of(path)
    assert 2 < len(files) <= many.backups + 1
    assert all(p.stat().st_size <= many.max_bytes for p in files)
    assert lines_of(path) == written  # nothing written into a file that was already rotated away


def test_an_existing_file_is_continued_and_rotated_once_it_is_full(tmp_path: Path) -> None:
    path = tmp_path / "beat.log"
    path.write_bytes(b"a" * (ROTATION.max_bytes - 10) + b"\n")
    out = RotatingFile(path, ROTATION)
    out.write(b"short\n")  # fits
    out.write(b"this one does not fit\n")
    out.close()
    assert (tmp_path / "beat.log.1").read_bytes().endswith(b"\nshort\n")
    assert path.read_bytes() == b"this one does not fit\n"


def test_a_child_that_prints_past_the_limit_leaves_a_bounded_number_of_private_files(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    chatty = "import sys\nfor n in range(20_000): sys.stdout.write(f'{n:06d} ' + 'y' * 60 + '\\n')\n"
    crash = "import sys; sys.stderr.write('on stderr too\\n'); sys.exit(3)"
    stack = Stack(
        [Child("chatty", [sys.executable, "-c", chatty]), Child("crash", [sys.executable, "-c", crash])],
        rotation=ROTATION,
    )
    stack.start(dict(os.environ), log_dir=log_dir)
    for child in stack.children:
        assert child.process is not None
        child.process.wait(timeout=30)
    stack.stop()

    chatty_log = log_dir / "chatty.log"
    files = files_of(chatty_log)
    assert len(files) == ROTATION.backups + 1
    assert all(p.stat().st_size <= ROTATION.max_bytes for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    kept = lines_of(chatty_log)
    assert kept[-1] == "019999 " + "y" * 60
    assert [int(line.split()[0]) for line in kept] == list(range(20_000 - len(kept), 20_000))
    assert (log_dir / "crash.log").read_text() == "on stderr too\n"


def test_output_that_cannot_be_written_is_dropped_and_counted_and_the_child_is_not_blocked(
    tmp_path: Path,
) -> None:
    output = ChildOutput(tmp_path / "full.log", ROTATION)
    output.file.close()  # every write fails from now on, as on a full disk
    output.file._open = lambda: (_ for _ in ()).throw(OSError(28, "No space left on device"))  # type: ignore[method-assign]
    payload = b"z" * 1000 + b"\n"
    for _ in range(500):  # 500 kB: far more than a pipe holds, so a stalled copy would block here
        os.write(output.write_fd, payload)
    output.close_write_end()
    assert output.wait(timeout=10)
    assert output.dropped_lines == 500
