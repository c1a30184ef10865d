"""Scope resolution: lexical refusals, the fd walk, and the check-then-use race."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.broker import scope
from appliance.broker.scope import ShareConfigError, Shares, Target, open_regular
from appliance.config import Limits
from appliance.errors import ExecutionError, ScopeError

LIMITS = Limits(name_bytes=32, path_bytes=128)


@pytest.fixture
def env(tmp_path: Path) -> dict:
    docs = tmp_path / "docs"
    (docs / "a" / "b").mkdir(parents=True)
    (docs / "a" / "b" / "f.txt").write_text("inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("SECRET")
    (outside / "b").mkdir()
    (outside / "b" / "f.txt").write_text("SECRET")
    photos = tmp_path / "photos"
    photos.mkdir()
    return {
        "shares": Shares({"docs": docs, "photos": photos}, LIMITS),
        "docs": docs,
        "outside": outside,
    }


def read(shares: Shares, target: Target) -> bytes:
    with shares.open_parent(target) as (dfd, name):
        fd = open_regular(dfd, name, target.canonical)
    try:
        return os.read(fd, 1000)
    finally:
        os.close(fd)


# -- lexical ------------------------------------------------------------------


def test_parse_plain_paths(env: dict) -> None:
    s = env["shares"]
    t = s.parse("share:docs/a/b/f.txt")
    assert t == Target("docs", ("a", "b", "f.txt"))
    assert t.canonical == "share:docs/a/b/f.txt"
    assert s.parse("share:docs") == s.parse("share:docs/") == Target("docs", ())
    assert s.parse("share:docs").canonical == "share:docs/"
    assert s.parse("share:docs/ünïcødé name.txt").name == "ünïcødé name.txt"
    assert t.parent().canonical == "share:docs/a/b"
    assert s.parse("share:docs/a").contains(t) and not t.contains(s.parse("share:docs/a"))
    assert not s.parse("share:photos/a").contains(s.parse("share:docs/a/b"))


@pytest.mark.parametrize(
    "resource, reason",
    [
        ("docs/a", "must start with 'share:'"),
        ("/etc/passwd", "must start with 'share:'"),
        ("file:docs/a", "must start with 'share:'"),
        ("share:", "names no share"),
        ("share:/a", "names no share"),
        ("share:nope/a", "unknown share"),
        ("share:DOCS/a", "unknown share"),
        ("share:docs//etc/passwd", "absolute paths"),
        ("share:docs/a//b", "empty path component"),
        ("share:docs/a/", "empty path component"),
        ("share:docs/..", "'..' components"),
        ("share:docs/a/../../outside", "'..' components"),
        ("share:docs/./a", "'.' components"),
        ("share:docs/a/.", "'.' components"),
        ("share:docs/a\x00b", "NUL byte"),
        ("share:docs\x00/a", "NUL byte"),
        ("share:docs/a\\..\\..\\x", "backslash"),
        ("share:docs/a\nb", "control character U+000A"),
        ("share:docs/a\x1b[31mb", "control character U+001B"),
        ("share:docs/a\x7fb", "control character U+007F"),
        ("share:docs/a\x85b", "control character U+0085"),
        ("share:docs/invoice\u202egnp.exe", "bidirectional control U+202E"),
        ("share:docs/a\udcffb", "not valid UTF-8"),
        ("share:docs/" + "x" * 33, "33 bytes is over the 32 limit"),
        ("share:docs/" + "é" * 17, "34 bytes is over the 32 limit"),
        ("share:docs/" + "/".join(["abcdefgh"] * 14), "over the 128 limit"),
        ("share:docs/.appliance-tmp-1234", "reserved for the broker"),
        ("share:docs/a/.appliance-deleting-x/f", "reserved for the broker"),
    ],
)
def test_parse_refuses(env: dict, resource: str, reason: str) -> None:
    with pytest.raises(ScopeError) as e:
        env["shares"].parse(resource)
    assert reason in e.value.reason
    assert e.value.status == 403


def test_parse_accepts_names_at_the_limit(env: dict) -> None:
    assert env["shares"].parse("share:docs/" + "x" * 32).name == "x" * 32
    assert env["shares"].parse("share:docs/.hidden").name == ".hidden"
    assert env["shares"].parse("share:docs/..x").name == "..x"


def test_parse_refuses_non_string(env: dict) -> None:
    with pytest.raises(ScopeError):
        env["shares"].parse(b"share:docs/a")  # type: ignore[arg-type]


# -- share configuration ------------------------------------------------------


def test_share_roots_must_exist_and_be_directories(tmp_path: Path) -> None:
    with pytest.raises(ShareConfigError, match="does not exist"):
        Shares({"x": tmp_path / "missing"}, LIMITS)
    (tmp_path / "file").write_text("")
    with pytest.raises(ShareConfigError, match="not a directory"):
        Shares({"x": tmp_path / "file"}, LIMITS)
    with pytest.raises(ShareConfigError, match="absolute"):
        Shares({"x": Path("relative")}, LIMITS)
    with pytest.raises(ShareConfigError, match="share name"):
        Shares({"bad/name": tmp_path}, LIMITS)


def test_overlapping_shares_refused(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ShareConfigError, match="overlap"):
        Shares({"a": tmp_path / "a", "b": tmp_path / "a" / "b"}, LIMITS)
    with pytest.raises(ShareConfigError, match="overlap"):
        Shares({"a": tmp_path / "a", "b": tmp_path / "a"}, LIMITS)


def test_symlinked_root_is_resolved_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_text("real")
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("other")
    link = tmp_path / "link"
    link.symlink_to(real)
    shares = Shares({"x": link}, LIMITS)
    assert shares.root("x") == real
    # Repointing the configured symlink later changes nothing.
    link.unlink()
    link.symlink_to(other)
    assert read(shares, shares.parse("share:x/f")) == b"real"


# -- the walk -----------------------------------------------------------------


def test_walk_reads_inside(env: dict) -> None:
    assert read(env["shares"], env["shares"].parse("share:docs/a/b/f.txt")) == b"inside"


def test_symlink_to_outside_refused(env: dict) -> None:
    (env["docs"] / "evil").symlink_to(env["outside"] / "f.txt")
    with pytest.raises(ScopeError, match="symlink"):
        read(env["shares"], env["shares"].parse("share:docs/evil"))


def test_symlink_inside_share_refused_too(env: dict) -> None:
    (env["docs"] / "alias").symlink_to(env["docs"] / "a" / "b" / "f.txt")
    with pytest.raises(ScopeError, match="symlink"):
        read(env["shares"], env["shares"].parse("share:docs/alias"))
    (env["docs"] / "reldir").symlink_to("a")
    with pytest.raises(ScopeError, match="symlink"):
        read(env["shares"], env["shares"].parse("share:docs/reldir/b/f.txt"))


def test_symlinked_parent_dir_refused(env: dict) -> None:
    (env["docs"] / "out").symlink_to(env["outside"])
    target = env["shares"].parse("share:docs/out/f.txt")
    with pytest.raises(ScopeError, match="share:docs/out is a symlink"):
        read(env["shares"], target)
    with pytest.raises(ScopeError, match="symlink"), env["shares"].open_dir(target.parent()):
        pass


def test_fifo_refused_without_blocking(env: dict) -> None:
    os.mkfifo(env["docs"] / "pipe")
    with pytest.raises(ScopeError, match="fifo"):
        read(env["shares"], env["shares"].parse("share:docs/pipe"))
    with (
        pytest.raises(ScopeError, match="fifo"),
        env["shares"].open_dir(env["shares"].parse("share:docs/pipe")),
    ):
        pass


def test_device_via_symlink_refused(env: dict) -> None:
    (env["docs"] / "null").symlink_to("/dev/null")
    with pytest.raises(ScopeError, match="symlink"):
        read(env["shares"], env["shares"].parse("share:docs/null"))


def test_device_node_refused(env: dict) -> None:
    try:
        os.mknod(env["docs"] / "null", 0o666 | 0o020000, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    with pytest.raises(ScopeError, match="char-device"):
        read(env["shares"], env["shares"].parse("share:docs/null"))


def test_file_as_directory_component(env: dict) -> None:
    with pytest.raises(ExecutionError, match="not a directory"):
        read(env["shares"], env["shares"].parse("share:docs/a/b/f.txt/x"))
    with pytest.raises(ExecutionError, match="does not exist"):
        read(env["shares"], env["shares"].parse("share:docs/nope/x"))


def test_open_parent_refuses_share_root(env: dict) -> None:
    with (
        pytest.raises(ScopeError, match="share root"),
        env["shares"].open_parent(Target("docs", ())),
    ):
        pass


# -- the race -----------------------------------------------------------------


def _swap_dir_for_symlink(docs: Path, outside: Path) -> None:
    os.rename(docs / "a", docs / "a.old")
    (docs / "a").symlink_to(outside)


def test_swap_before_walk_is_refused(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory replaced by a symlink to outside after parse: the walk refuses it."""
    target = env["shares"].parse("share:docs/a/b/f.txt")
    _swap_dir_for_symlink(env["docs"], env["outside"])
    with pytest.raises(ScopeError, match="share:docs/a is a symlink"):
        read(env["shares"], target)


def test_swap_during_walk_stays_inside(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap lands after 'a' was opened: the fds already held keep the walk
    on the original directory, so the read returns the inside file, never the
    outside one."""
    real_open = os.open
    swapped = []

    def racing_open(path, flags, mode=0o777, *, dir_fd=None):  # noqa: ANN001, ANN202
        if path == "b" and not swapped:
            _swap_dir_for_symlink(env["docs"], env["outside"])
            swapped.append(True)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    target = env["shares"].parse("share:docs/a/b/f.txt")
    monkeypatch.setattr(scope.os, "open", racing_open)
    assert read(env["shares"], target) == b"inside"
    assert swapped
    # And the next walk sees the symlink and refuses.
    with pytest.raises(ScopeError, match="symlink"):
        read(env["shares"], target)


def test_final_file_swapped_for_symlink_after_check(
    env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lstat said 'regular file', then it became a symlink: O_NOFOLLOW refuses."""
    real_open = os.open
    f = env["docs"] / "a" / "b" / "f.txt"

    def racing_open(path, flags, mode=0o777, *, dir_fd=None):  # noqa: ANN001, ANN202
        if path == "f.txt":
            f.unlink()
            f.symlink_to(env["outside"] / "f.txt")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    target = env["shares"].parse("share:docs/a/b/f.txt")
    monkeypatch.setattr(scope.os, "open", racing_open)
    with pytest.raises(ScopeError, match="symlink"):
        read(env["shares"], target)


def test_final_file_swapped_for_fifo_after_check(
    env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lstat said 'regular file', then a FIFO took its place: the open does not
    block (O_NONBLOCK) and fstat on the opened fd refuses it."""
    real_open = os.open
    f = env["docs"] / "a" / "b" / "f.txt"

    def racing_open(path, flags, mode=0o777, *, dir_fd=None):  # noqa: ANN001, ANN202
        if path == "f.txt":
            f.unlink()
            os.mkfifo(f)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    target = env["shares"].parse("share:docs/a/b/f.txt")
    monkeypatch.setattr(scope.os, "open", racing_open)
    with pytest.raises(ScopeError, match="fifo"):
        read(env["shares"], target)
