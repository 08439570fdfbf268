"""Specification of the path check behind data-plane confinement: a path is judged by where it
really leads, and a path that cannot be judged is refused."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.confinement.paths import MAX_PATH_BYTES, PathGuard, PathRefused, parse_roots


def build_tree(base: Path) -> Path:
    """base/root (allowed) with links inside, and base/outside beside it."""
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.db").write_text("not yours")
    (root / "out").symlink_to(outside)
    (root / "up").symlink_to("..")
    (root / "sub" / "back").symlink_to(root / "sub")
    (root / "to-secret.db").symlink_to(outside / "secret.db")
    (root / "dangling.db").symlink_to(outside / "created-later.db")
    (root / "inner.db").symlink_to(root / "sub" / "real.db")
    return base


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path)


def guard(tree: Path) -> PathGuard:
    return PathGuard((tree / "root",))


def test_a_path_inside_a_root_is_returned_resolved(tree: Path) -> None:
    assert guard(tree).confine(f"{tree}/root/sub/back/x.db") == tree / "root" / "sub" / "x.db"


def test_a_path_that_does_not_exist_yet_inside_a_root_is_allowed(tree: Path) -> None:
    assert guard(tree).confine(f"{tree}/root/new/deeper/x.db") == tree / "root" / "new" / "deeper" / "x.db"


def test_the_root_itself_is_allowed_as_a_folder(tree: Path) -> None:
    assert guard(tree).confine(f"{tree}/root") == tree / "root"


def test_a_path_outside_every_root_is_refused_naming_it_and_the_roots(tree: Path) -> None:
    with pytest.raises(PathRefused) as refused:
        guard(tree).confine(f"{tree}/outside/x.db")
    assert str(refused.value) == f"path {tree}/outside/x.db is outside the allowed roots ({tree}/root)"


@pytest.mark.parametrize("link", ["out/secret.db", "to-secret.db", "up/outside/secret.db", "dangling.db"])
def test_a_link_inside_a_root_that_leads_outside_is_refused(tree: Path, link: str) -> None:
    with pytest.raises(PathRefused, match=r"resolves to .*/outside/.*, which is outside the allowed roots"):
        guard(tree).confine(f"{tree}/root/{link}")


def test_a_link_inside_a_root_that_stays_inside_is_followed(tree: Path) -> None:
    assert guard(tree).confine(f"{tree}/root/inner.db") == tree / "root" / "sub" / "real.db"


def test_a_sibling_folder_whose_name_starts_like_the_root_is_outside(tree: Path) -> None:
    (tree / "root-evil").mkdir()
    with pytest.raises(PathRefused, match="outside the allowed roots"):
        guard(tree).confine(f"{tree}/root-evil/x.db")


def test_a_root_that_is_itself_a_link_admits_paths_under_its_target(tree: Path) -> None:
    (tree / "root-link").symlink_to(tree / "root")
    linked = PathGuard((tree / "root-link",))
    assert linked.confine(f"{tree}/root/x.db") == tree / "root" / "x.db"
    assert linked.confine(f"{tree}/root-link/x.db") == tree / "root" / "x.db"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("relative/x.db", "is not an absolute path"),
        ("~/x.db", "is not an absolute path"),
        ("{root}/sub/../x.db", "has a '..' segment"),
        ("{root}/..", "has a '..' segment"),
        ("{root}/a\x00b.db", "contains a NUL byte"),
        ("{root}/\ud800.db", "is not a valid file name"),
        ("{root}/" + "a" * MAX_PATH_BYTES, f"is longer than {MAX_PATH_BYTES} bytes"),
    ],
)
def test_a_path_that_cannot_be_judged_is_refused_saying_why(tree: Path, raw: str, why: str) -> None:
    with pytest.raises(PathRefused, match=why):
        guard(tree).confine(raw.format(root=tree / "root"))


def test_a_loop_of_links_is_refused(tree: Path) -> None:
    (tree / "root" / "loop-a").symlink_to(tree / "root" / "loop-b")
    (tree / "root" / "loop-b").symlink_to(tree / "root" / "loop-a")
    with pytest.raises(PathRefused, match="loop of symbolic links"):
        guard(tree).confine(f"{tree}/root/loop-a/x.db")


def test_doubled_slashes_are_one_slash(tree: Path) -> None:
    assert guard(tree).confine(f"/{tree}//root///x.db") == tree / "root" / "x.db"
    with pytest.raises(PathRefused):
        guard(tree).confine(f"/{tree}//outside//x.db")


def test_a_link_target_that_would_read_as_a_secret_reference_is_refused(tree: Path) -> None:
    (tree / "root" / "${env:HOME}").mkdir()
    (tree / "root" / "odd").symlink_to(tree / "root" / "${env:HOME}")
    with pytest.raises(PathRefused, match=r"holds '\$\{'"):
        guard(tree).confine(f"{tree}/root/odd/x.db")


def test_unicode_names_are_compared_as_the_bytes_they_are(tree: Path) -> None:
    # "é" composed and decomposed are two different names on Linux: neither stands for the other
    (tree / "caf\u00e9").mkdir()
    composed = PathGuard((tree / "caf\u00e9",))
    assert composed.confine(f"{tree}/caf\u00e9/x.db") == tree / "caf\u00e9" / "x.db"
    with pytest.raises(PathRefused):
        composed.confine(f"{tree}/cafe\u0301/x.db")
    # a slash look-alike is a character of a name, not a separator: this is one name inside root
    odd = guard(tree).confine(f"{tree}/root/sub\u2215..\u2215..\u2215outside/x.db")
    assert odd.parent.parent == tree / "root"


def test_roots_are_split_at_colons_and_commas_and_must_be_absolute() -> None:
    assert parse_roots("/a:/b, /c,,", what="S") == [Path("/a"), Path("/b"), Path("/c")]
    assert parse_roots("", what="S") == []
    with pytest.raises(PathRefused, match="S: root 'data' is not an absolute path"):
        parse_roots("/a:data", what="S")
    with pytest.raises(PathRefused, match="has a '..' segment"):
        parse_roots("/a/../etc", what="S")


# --- the property: whatever the path, an accepted one is where the kernel puts the file ---------

SEGMENTS = st.sampled_from(
    [".", "..", "", "sub", "out", "up", "back", "inner.db", "to-secret.db", "dangling.db", "x.db"]
    + ["caf\u00e9", "\u202eevil", "a b", "x" * 255, "x" * 256, "a\x00b", "\ud800", "~", "${env:HOME}"]
)
DEPTH = 12  # the tree sits this deep, so that no '..' of a path can climb out of the temp folder


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=st.lists(SEGMENTS, max_size=9), leading=st.sampled_from(["/", "//", "///"]))
def test_an_accepted_path_is_inside_the_root_where_the_kernel_opens_it(
    segments: list[str], leading: str
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch).joinpath(*[f"d{i}" for i in range(DEPTH)])
        base.mkdir(parents=True)
        build_tree(base)  # the fixture's layout, fresh for each example
        root = base / "root"
        raw = leading + str(root).lstrip("/") + "/" + "/".join(segments)
        try:
            confined = PathGuard((root,)).confine(raw)
        except PathRefused:
            return
        assert ".." not in raw.split("/")
        real_root = os.path.realpath(root)
        assert str(confined) == real_root or str(confined).startswith(real_root + "/")
        try:  # the kernel as the judge: open (creating) the path as given, and ask where it is
            fd = os.open(raw, os.O_RDONLY | os.O_CREAT, 0o600)
        except (IsADirectoryError, NotADirectoryError, FileNotFoundError, OSError):
            return  # a missing folder, a too-long name: nothing was created anywhere
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        assert where == str(confined)
        assert not (base / "outside" / "created-later.db").exists()
