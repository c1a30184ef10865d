"""File actions: every verb, its undo, never-overwrite, limits, races and crashes."""

from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.broker.files import (
    TRASH_DIR,
    FileOps,
    Kept,
    Outcome,
    UndoRecord,
    base,
    creating,
    deleting,
    fsutil,
)
from appliance.broker.files import moving as fileops_mod
from appliance.broker.files.trees import walk_tree
from appliance.broker.scope import ShareConfigError, Shares, Target
from appliance.broker.snapshots import SnapshotError, SnapshotStore, manifest_id
from appliance.config import Limits
from appliance.errors import ApplianceError, ExecutionError, InsufficientStorage, ScopeError

LIMITS = Limits(read_bytes=64, write_bytes=100, list_entries=5, name_bytes=64, path_bytes=256)


class Env:
    def __init__(self, base: Path, **kw: Any):
        self.base = base
        self.docs = base / "docs"
        self.photos = base / "photos"
        self.outside = base / "outside"
        for d in (self.docs, self.photos, self.outside):
            d.mkdir(parents=True)
        (self.docs / "a.txt").write_text("alpha")
        (self.docs / "sub").mkdir()
        (self.docs / "sub" / "b.bin").write_bytes(b"\x00\xffbeta")
        os.chmod(self.docs / "sub" / "b.bin", 0o640)
        (self.docs / "sub" / "deep").mkdir()
        (self.docs / "sub" / "deep" / "c.txt").write_text("gamma")
        (self.outside / "secret").write_text("SECRET")
        self.shares = Shares({"docs": self.docs, "photos": self.photos}, LIMITS)
        self.store = SnapshotStore(base / "state" / "snapshots")
        self.ops = FileOps(self.shares, self.store, LIMITS, **kw)
        self.keeper = Keeper()

    def t(self, resource: str) -> Target:
        return self.shares.parse(resource)

    def run(self, verb: str, resource: str, **params: Any) -> Outcome:
        if isinstance(params.get("to"), str):
            params["to"] = self.t(params["to"])
        return self.ops.execute(verb, self.t(resource), params, keeper=self.keeper)

    def undo(self, outcome: Outcome) -> dict:
        # Undo records go through SQLite as JSON: prove they survive that.
        assert outcome.undo is not None
        record = UndoRecord.from_json(json.loads(json.dumps(outcome.undo.to_json())))
        return self.ops.undo(record, keeper=self.keeper)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def tree(root: Path, *, times: bool = False) -> dict[str, tuple]:
    """Everything under root but the share's trash: names, types, bytes and
    modes (and mtimes)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and TRASH_DIR in dirnames:
            dirnames.remove(TRASH_DIR)
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                t = (st.st_mtime_ns,) if times else ()
                out[rel] = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode), *t)
            else:
                out[rel] = ("other",)
    return out


def visible(root: Path) -> dict[str, tuple]:
    return {k: v for k, v in tree(root).items() if ".appliance-" not in k}


def junk(root: Path) -> list[str]:
    """Leftovers of an action: hidden temporary or half-deleted names."""
    return [k for k in tree(root) if fsutil.LEFTOVER_RE.match(Path(k).name)]


def trash(root: Path) -> dict[str, tuple]:
    """What the share's trash holds."""
    return tree(root / TRASH_DIR) if (root / TRASH_DIR).is_dir() else {}


class Keeper:
    """Stands in for the retention: a budget, and what was kept."""

    def __init__(self, budget: int = 1 << 40):
        self.budget, self.used = budget, 0
        self.items: list[Kept] = []

    def admit(self, size: int, what: str) -> None:
        if self.used + size > self.budget:
            raise InsufficientStorage(f"{what} would go over the budget")

    def kept(self, kept: Kept) -> None:
        self.items.append(kept)
        self.used += kept.size


# -- reading verbs ------------------------------------------------------------


def test_list(env: Env) -> None:
    os.mkfifo(env.docs / "pipe")
    (env.docs / "link").symlink_to(env.outside)
    (env.docs / ".appliance-tmp-x").write_text("")
    (env.docs / "bad\nname").write_text("")
    r = env.run("file.list", "share:docs").result
    assert r["resource"] == "share:docs/"
    got = {e["name"]: (e["type"], e["size"]) for e in r["entries"]}
    assert got == {
        "a.txt": ("file", 5),
        "link": ("symlink", 0),
        "pipe": ("fifo", 0),
        "sub": ("dir", 0),
    }
    assert r["skipped"] == 2 and r["truncated"] is False
    assert all(isinstance(e["mtime"], float) for e in r["entries"])


def test_list_is_capped(env: Env) -> None:
    for i in range(7):
        (env.photos / f"p{i}").write_text("")
    r = env.run("file.list", "share:photos").result
    assert [e["name"] for e in r["entries"]] == ["p0", "p1", "p2", "p3", "p4"]
    assert r["truncated"] is True


def test_list_refuses_symlinked_dir(env: Env) -> None:
    (env.docs / "out").symlink_to(env.outside)
    with pytest.raises(ScopeError, match="symlink"):
        env.run("file.list", "share:docs/out")


def test_stat(env: Env) -> None:
    r = env.run("file.stat", "share:docs/sub/b.bin").result
    assert (r["type"], r["size"], r["mode"]) == ("file", 6, 0o640)
    assert env.run("file.stat", "share:docs/sub").result["type"] == "dir"
    assert env.run("file.stat", "share:docs").result["type"] == "dir"
    with pytest.raises(ExecutionError, match="does not exist"):
        env.run("file.stat", "share:docs/nope")


def test_read_text_binary_offset_and_limits(env: Env) -> None:
    r = env.run("file.read", "share:docs/a.txt").result
    assert (r["content"], r["encoding"], r["size"], r["truncated"]) == ("alpha", "utf-8", 5, False)
    r = env.run("file.read", "share:docs/sub/b.bin").result
    assert r["encoding"] == "base64" and base64.b64decode(r["content"]) == b"\x00\xffbeta"
    r = env.run("file.read", "share:docs/a.txt", offset=1, max_bytes=3).result
    assert (r["content"], r["truncated"], r["offset"]) == ("lph", True, 1)
    (env.docs / "big").write_bytes(b"x" * 200)
    r = env.run("file.read", "share:docs/big", max_bytes=10_000).result
    assert r["length"] == LIMITS.read_bytes and r["truncated"] and r["size"] == 200
    with pytest.raises(ExecutionError, match="non-negative"):
        env.run("file.read", "share:docs/a.txt", offset=-1)
    with pytest.raises(ExecutionError, match="directory"):
        env.run("file.read", "share:docs/sub")


def test_read_refuses_special_files(env: Env) -> None:
    os.mkfifo(env.docs / "pipe")
    with pytest.raises(ScopeError, match="fifo"):
        env.run("file.read", "share:docs/pipe")
    (env.docs / "null").symlink_to("/dev/null")
    with pytest.raises(ScopeError, match="symlink"):
        env.run("file.read", "share:docs/null")
    (env.docs / "inner").symlink_to(env.docs / "a.txt")
    with pytest.raises(ScopeError, match="symlink"):
        env.run("file.read", "share:docs/inner")


# -- mkdir --------------------------------------------------------------------


def test_mkdir_and_undo(env: Env) -> None:
    before = tree(env.docs)
    o = env.run("file.mkdir", "share:docs/new")
    assert (env.docs / "new").is_dir() and o.undo.to_json() == {
        "verb": "file.mkdir",
        "created": ["share:docs/new"],
    }
    with pytest.raises(ExecutionError, match="already exists"):
        env.run("file.mkdir", "share:docs/new")
    with pytest.raises(ExecutionError, match="does not exist"):
        env.run("file.mkdir", "share:docs/x/y")
    env.undo(o)
    assert tree(env.docs) == before


def test_mkdir_parents_undo_removes_only_what_it_made(env: Env) -> None:
    before = tree(env.docs)
    o = env.run("file.mkdir", "share:docs/sub/x/y/z", parents=True)
    assert o.result["created"] == ["share:docs/sub/x", "share:docs/sub/x/y", "share:docs/sub/x/y/z"]
    (env.docs / "sub" / "x" / "y" / "keep").write_text("user file")
    with pytest.raises(ExecutionError, match="not empty"):
        env.undo(o)
    assert (env.docs / "sub" / "x" / "y" / "z").is_dir()  # all-or-nothing: nothing removed
    (env.docs / "sub" / "x" / "y" / "keep").unlink()
    env.undo(o)
    assert tree(env.docs) == before


def test_mkdir_parents_through_symlink_refused(env: Env) -> None:
    (env.docs / "out").symlink_to(env.outside)
    with pytest.raises(ScopeError, match="symlink"):
        env.run("file.mkdir", "share:docs/out/x", parents=True)
    assert sorted(os.listdir(env.outside)) == ["secret"]


# -- write --------------------------------------------------------------------


def test_write_new_file_and_undo(env: Env) -> None:
    before = tree(env.docs)
    o = env.run("file.write", "share:docs/sub/new.txt", content="héllo")
    assert (env.docs / "sub" / "new.txt").read_text() == "héllo"
    assert o.result["sha256"] == hashlib.sha256("héllo".encode()).hexdigest()
    assert junk(env.docs) == []
    r = env.undo(o)
    assert tree(env.docs) == before
    # The removed file went into the trash: the undo destroys nothing either.
    assert r == {"removed": "share:docs/sub/new.txt", "trash": True}
    assert [v[1] for v in trash(env.docs).values()] == ["héllo".encode()]
    assert [k.source for k in env.keeper.items] == ["share:docs/sub/new.txt"]


def test_write_base64(env: Env) -> None:
    data = bytes(range(100))
    env.run(
        "file.write", "share:docs/raw", content=base64.b64encode(data).decode(), encoding="base64"
    )
    assert (env.docs / "raw").read_bytes() == data
    with pytest.raises(ExecutionError, match="not valid base64"):
        env.run("file.write", "share:docs/raw2", content="!!!", encoding="base64")


def test_write_never_overwrites(env: Env) -> None:
    with pytest.raises(ExecutionError, match="already exists"):
        env.run("file.write", "share:docs/a.txt", content="evil")
    assert (env.docs / "a.txt").read_text() == "alpha"
    (env.docs / "l").symlink_to(env.outside / "secret")
    with pytest.raises(ExecutionError, match="already exists"):
        env.run("file.write", "share:docs/l", content="evil")
    assert (env.outside / "secret").read_text() == "SECRET"


def test_write_never_overwrites_when_the_name_appears_late(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone creates the name after the existence check: link() refuses."""
    real_link = os.link

    def racing_link(src, dst, **kw):  # noqa: ANN001, ANN202
        (env.docs / "late.txt").write_text("theirs")
        return real_link(src, dst, **kw)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(ExecutionError, match="already exists"):
        env.run("file.write", "share:docs/late.txt", content="mine")
    monkeypatch.undo()
    assert (env.docs / "late.txt").read_text() == "theirs"
    assert junk(env.docs) == []


def test_write_size_limit(env: Env) -> None:
    env.run("file.write", "share:docs/ok", content="x" * 100)
    with pytest.raises(ExecutionError, match="over the 100 byte limit"):
        env.run("file.write", "share:docs/big", content="x" * 101)
    with pytest.raises(ExecutionError, match="over the 100 byte limit"):
        env.run("file.write", "share:docs/big", content="é" * 51)  # 102 bytes
    with pytest.raises(ExecutionError, match="over the 100 byte limit"):
        env.run(
            "file.write",
            "share:docs/big",
            content=base64.b64encode(b"x" * 101).decode(),
            encoding="base64",
        )
    assert not (env.docs / "big").exists()


def test_write_undo_refused_if_changed(env: Env) -> None:
    o = env.run("file.write", "share:docs/n.txt", content="one")
    (env.docs / "n.txt").write_text("edited")
    with pytest.raises(ExecutionError, match="changed since"):
        env.undo(o)
    assert (env.docs / "n.txt").read_text() == "edited"


# -- copy ---------------------------------------------------------------------


def test_copy_and_undo(env: Env) -> None:
    before = tree(env.photos)
    o = env.run("file.copy", "share:docs/sub/b.bin", to="share:photos/b.bin")
    assert (env.photos / "b.bin").read_bytes() == b"\x00\xffbeta"
    assert stat.S_IMODE((env.photos / "b.bin").stat().st_mode) == 0o640
    assert (env.docs / "sub" / "b.bin").exists()
    # In the kernel: a reflink where the file system has them, else copy_file_range.
    assert o.result["copied_by"] in ("reflink", "copy_file_range", "sendfile")
    assert o.undo.identity.ino == (env.photos / "b.bin").stat().st_ino and not o.undo.sha256
    assert junk(env.photos) == []
    env.undo(o)
    assert tree(env.photos) == before
    assert [v[1] for v in trash(env.photos).values()] == [b"\x00\xffbeta"]


def test_copy_of_a_large_file_is_exact(env: Env) -> None:
    data = os.urandom(3 << 20) + b"tail"
    (env.docs / "big.bin").write_bytes(data)
    env.run("file.copy", "share:docs/big.bin", to="share:photos/big.bin")
    assert (env.photos / "big.bin").read_bytes() == data


def test_copy_undo_refused_if_the_copy_changed(env: Env) -> None:
    o = env.run("file.copy", "share:docs/a.txt", to="share:photos/a.txt")
    (env.photos / "a.txt").write_text("edited")
    with pytest.raises(ExecutionError, match="changed since"):
        env.undo(o)
    (env.photos / "a.txt").unlink()
    (env.photos / "a.txt").write_text("alpha")  # same content, another file
    with pytest.raises(ExecutionError, match="changed since"):
        env.undo(o)
    assert (env.photos / "a.txt").read_text() == "alpha" and trash(env.photos) == {}


def test_copy_refused_without_room(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fstatvfs

    class Full:
        def __init__(self, st: os.statvfs_result):
            self.f_frsize, self.f_bavail = st.f_frsize, 1

    monkeypatch.setattr(creating.os, "fstatvfs", lambda fd: Full(real(fd)))
    with pytest.raises(InsufficientStorage, match="no room") as info:
        env.run("file.copy", "share:docs/a.txt", to="share:photos/a.txt")
    assert info.value.status == 507
    assert os.listdir(env.photos) == []


def test_copy_refusals(env: Env) -> None:
    with pytest.raises(ExecutionError, match="already exists"):
        env.run("file.copy", "share:docs/a.txt", to="share:docs/sub/deep/c.txt")
    assert (env.docs / "sub" / "deep" / "c.txt").read_text() == "gamma"
    with pytest.raises(ExecutionError, match="directory"):
        env.run("file.copy", "share:docs/sub", to="share:photos/sub")
    with pytest.raises(ExecutionError, match="does not exist"):
        env.run("file.copy", "share:docs/nope", to="share:photos/x")
    with pytest.raises(ExecutionError, match="does not exist"):
        env.run("file.copy", "share:docs/a.txt", to="share:photos/no/x")
    (env.docs / "out").symlink_to(env.outside)
    with pytest.raises(ScopeError, match="symlink"):
        env.run("file.copy", "share:docs/out/secret", to="share:photos/x")
    with pytest.raises(ScopeError, match="symlink"):
        env.run("file.copy", "share:docs/a.txt", to="share:docs/out/x")
    assert sorted(os.listdir(env.outside)) == ["secret"]
    with pytest.raises(ExecutionError, match="resolved target"):
        env.ops.execute("file.copy", env.t("share:docs/a.txt"), {"to": "share:photos/x"})


# -- move and rename ----------------------------------------------------------


@pytest.mark.parametrize(
    "src, dest",
    [
        ("share:docs/a.txt", "share:docs/sub/a.txt"),
        ("share:docs/a.txt", "share:photos/a2.txt"),
        ("share:docs/sub", "share:photos/moved"),
        ("share:docs/sub/deep", "share:docs/deep2"),
    ],
)
def test_move_and_undo(env: Env, src: str, dest: str) -> None:
    before = {"docs": tree(env.docs, times=True), "photos": tree(env.photos, times=True)}
    o = env.run("file.move", src, to=dest)
    # Nothing is destroyed, so nothing is copied: no snapshot, nothing kept.
    assert o.snapshot_id is None and env.store.snapshot_ids() == [] and env.keeper.items == []
    assert set(o.undo.to_json()) == {"verb", "from", "to", "identity"}
    s, d = env.t(src), env.t(dest)
    assert not (env.shares.root(s.share).joinpath(*s.parts)).exists()
    assert (env.shares.root(d.share).joinpath(*d.parts)).exists()
    env.undo(o)
    after = {"docs": tree(env.docs, times=True), "photos": tree(env.photos, times=True)}
    assert after == before


def test_move_never_overwrites(env: Env) -> None:
    (env.photos / "x").write_text("theirs")
    (env.photos / "d").mkdir()
    for src in ("share:docs/a.txt", "share:docs/sub"):
        for dest in ("share:photos/x", "share:photos/d"):
            with pytest.raises(ExecutionError, match="already exists"):
                env.run("file.move", src, to=dest)
    assert (env.photos / "x").read_text() == "theirs" and os.listdir(env.photos / "d") == []
    assert (env.docs / "a.txt").read_text() == "alpha" and (env.docs / "sub").is_dir()


def test_move_dir_never_overwrites_when_the_name_appears_late(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fileops_mod.renameat2_noreplace

    def racing(*a: Any) -> None:
        (env.photos / "late").mkdir()
        (env.photos / "late" / "theirs").write_text("x")
        real(*a)

    monkeypatch.setattr(fileops_mod, "renameat2_noreplace", racing)
    with pytest.raises(ExecutionError, match="already exists"):
        env.run("file.move", "share:docs/sub", to="share:photos/late")
    assert os.listdir(env.photos / "late") == ["theirs"] and (env.docs / "sub").is_dir()


def test_move_refusals(env: Env) -> None:
    with pytest.raises(ExecutionError, match="into itself"):
        env.run("file.move", "share:docs/sub", to="share:docs/sub/deep/x")
    with pytest.raises(ExecutionError, match="does not exist"):
        env.run("file.move", "share:docs/a.txt", to="share:docs/nope/a.txt")
    with pytest.raises(ScopeError, match="share root"):
        env.run("file.move", "share:docs", to="share:photos/x")
    (env.docs / "link").symlink_to(env.docs / "a.txt")
    with pytest.raises(ScopeError, match="symlink"):
        env.run("file.move", "share:docs/link", to="share:photos/x")
    os.mkfifo(env.docs / "pipe")
    with pytest.raises(ScopeError, match="fifo"):
        env.run("file.move", "share:docs/pipe", to="share:photos/x")


def test_a_folder_moves_whole_without_following_what_it_holds(env: Env) -> None:
    """One rename: a symlink inside goes along as a symlink, never followed,
    and comes back with the undo."""
    (env.docs / "sub" / "deep" / "l").symlink_to(env.outside)
    o = env.run("file.move", "share:docs/sub", to="share:photos/sub")
    assert os.readlink(env.photos / "sub" / "deep" / "l") == str(env.outside)
    assert sorted(os.listdir(env.outside)) == ["secret"]
    env.undo(o)
    assert os.readlink(env.docs / "sub" / "deep" / "l") == str(env.outside)


def test_move_undo_refused_when_things_changed(env: Env) -> None:
    o = env.run("file.move", "share:docs/a.txt", to="share:photos/a.txt")
    st = (env.photos / "a.txt").stat()
    (env.photos / "a.txt").write_text("edited")
    with pytest.raises(ExecutionError, match="not what was moved there"):
        env.undo(o)
    (env.photos / "a.txt").write_text("alpha")
    os.utime(env.photos / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    (env.docs / "a.txt").write_text("new one")
    with pytest.raises(ExecutionError, match="taken"):
        env.undo(o)
    (env.docs / "a.txt").unlink()
    env.undo(o)  # the same file, its size and time as moved, the source free: allowed
    assert (env.docs / "a.txt").read_text() == "alpha"
    # A folder is the same folder whatever it holds now: it goes back with it.
    o = env.run("file.move", "share:docs/sub", to="share:photos/sub")
    (env.photos / "sub" / "deep" / "extra").write_text("x")
    env.undo(o)
    assert (env.docs / "sub" / "deep" / "extra").read_text() == "x"


def test_move_undo_refuses_a_file_swapped_in_by_a_share_writer(env: Env) -> None:
    """Someone who can write into the share replaces the moved file with his
    own (same name, same content, even the same times): the undo moves
    nothing, because it is not the inode that was moved."""
    o = env.run("file.move", "share:docs/a.txt", to="share:photos/a.txt")
    st = (env.photos / "a.txt").stat()
    os.rename(env.photos / "a.txt", env.outside / "kept-aside")
    (env.photos / "a.txt").write_text("alpha")
    os.utime(env.photos / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ExecutionError, match="not what was moved there"):
        env.undo(o)
    assert not (env.docs / "a.txt").exists()
    # A folder swapped for another folder is refused the same way.
    o = env.run("file.move", "share:docs/sub", to="share:photos/sub")
    os.rename(env.photos / "sub", env.outside / "sub-aside")
    (env.photos / "sub").mkdir()
    with pytest.raises(ExecutionError, match="not what was moved there"):
        env.undo(o)
    assert not (env.docs / "sub").exists()


def test_move_undo_refuses_symlinks_planted_where_it_would_act(env: Env) -> None:
    o = env.run("file.move", "share:docs/sub/b.bin", to="share:photos/b.bin")
    # The moved file replaced by a symlink to something outside:
    os.rename(env.photos / "b.bin", env.photos / "aside.bin")
    (env.photos / "b.bin").symlink_to(env.outside / "secret")
    with pytest.raises(ScopeError, match="symlink"):
        env.undo(o)
    (env.photos / "b.bin").unlink()
    os.rename(env.photos / "aside.bin", env.photos / "b.bin")
    # The folder it would go back into replaced by a symlink to outside:
    os.rename(env.docs / "sub", env.docs / "sub-aside")
    (env.docs / "sub").symlink_to(env.outside)
    with pytest.raises(ScopeError, match="symlink"):
        env.undo(o)
    assert sorted(os.listdir(env.outside)) == ["secret"]
    assert (env.photos / "b.bin").read_bytes() == b"\x00\xffbeta"


def test_rename_and_undo(env: Env) -> None:
    before = tree(env.docs, times=True)
    o = env.run("file.rename", "share:docs/sub/b.bin", name="renamed.bin")
    assert (env.docs / "sub" / "renamed.bin").read_bytes() == b"\x00\xffbeta"
    assert o.undo.dest == "share:docs/sub/renamed.bin"
    env.undo(o)
    assert tree(env.docs, times=True) == before
    o = env.run("file.rename", "share:docs/sub", name="sub2")
    env.undo(o)
    assert tree(env.docs, times=True) == before


@pytest.mark.parametrize(
    "name, err",
    [("../x", ScopeError), ("a/b", ScopeError), ("..", ScopeError), ("", ScopeError)],
)
def test_rename_refuses_bad_names(env: Env, name: str, err: type) -> None:
    with pytest.raises(err):
        env.run("file.rename", "share:docs/a.txt", name=name)
    assert (env.docs / "a.txt").exists()


def test_rename_never_overwrites(env: Env) -> None:
    with pytest.raises(ExecutionError, match="already exists"):
        env.run("file.rename", "share:docs/a.txt", name="sub")
    (env.docs / "b.txt").write_text("b")
    with pytest.raises(ExecutionError, match="already exists"):
        env.run("file.rename", "share:docs/a.txt", name="b.txt")
    assert (env.docs / "b.txt").read_text() == "b" and (env.docs / "a.txt").read_text() == "alpha"


# -- delete -------------------------------------------------------------------


def test_delete_file_goes_to_the_trash_and_comes_back(env: Env) -> None:
    before = tree(env.docs, times=True)
    ino = (env.docs / "sub" / "b.bin").stat().st_ino
    o = env.run("file.delete", "share:docs/sub/b.bin")
    assert not (env.docs / "sub" / "b.bin").exists()
    # A rename: the same inode in the share's trash, nothing in the store.
    (item,) = os.listdir(env.docs / TRASH_DIR)
    assert (env.docs / TRASH_DIR / item).stat().st_ino == ino
    assert o.undo.trash == item and o.snapshot_id is None and env.store.snapshot_ids() == []
    assert o.result == {
        "resource": "share:docs/sub/b.bin",
        "type": "file",
        "files": 1,
        "bytes": 6,
        "trash": True,
    }
    assert env.keeper.items == [Kept(f"trash:docs/{item}", "share:docs/sub/b.bin", 6)]
    assert stat.S_IMODE((env.docs / TRASH_DIR).stat().st_mode) == 0o700
    env.undo(o)
    assert tree(env.docs, times=True) == before
    assert (env.docs / "sub" / "b.bin").stat().st_ino == ino and trash(env.docs) == {}


def test_delete_tree_and_undo(env: Env) -> None:
    os.chmod(env.docs / "sub" / "deep", 0o750)
    (env.docs / "sub" / "deep" / "l").symlink_to(env.outside)  # goes along, never followed
    before = tree(env.docs, times=True)
    o = env.run("file.delete", "share:docs/sub")
    assert sorted(os.listdir(env.docs)) == [TRASH_DIR, "a.txt"]
    assert o.result["files"] == 3 and o.result["bytes"] == 6 + 5 + len(str(env.outside))
    env.undo(o)
    assert tree(env.docs, times=True) == before
    assert junk(env.docs) == [] and trash(env.docs) == {}
    assert sorted(os.listdir(env.outside)) == ["secret"]


def test_delete_undo_refused_if_path_taken(env: Env) -> None:
    o = env.run("file.delete", "share:docs/a.txt")
    (env.docs / "a.txt").write_text("new")
    with pytest.raises(ExecutionError, match="taken"):
        env.undo(o)
    assert (env.docs / "a.txt").read_text() == "new"
    o = env.run("file.delete", "share:docs/sub")
    (env.docs / "sub").mkdir()
    with pytest.raises(ExecutionError, match="taken"):
        env.undo(o)
    assert os.listdir(env.docs / "sub") == [] and junk(env.docs) == []


def test_delete_refusals(env: Env) -> None:
    with pytest.raises(ScopeError, match="share root"):
        env.run("file.delete", "share:docs")
    with pytest.raises(ExecutionError, match="does not exist"):
        env.run("file.delete", "share:docs/nope")
    (env.docs / "link").symlink_to(env.outside / "secret")
    with pytest.raises(ScopeError, match="symlink"):
        env.run("file.delete", "share:docs/link")
    assert (env.outside / "secret").read_text() == "SECRET"


def test_delete_refused_over_the_budget_before_anything_changes(env: Env) -> None:
    env.keeper.budget = 8
    before = tree(env.docs)
    with pytest.raises(InsufficientStorage, match="over the budget") as info:
        env.run("file.delete", "share:docs/sub")  # 11 bytes
    assert info.value.status == 507 and tree(env.docs) == before and trash(env.docs) == {}
    env.run("file.delete", "share:docs/a.txt")  # 5 bytes: fits
    with pytest.raises(InsufficientStorage):
        env.run("file.delete", "share:docs/sub/b.bin")  # 6 more: does not
    assert (env.docs / "sub" / "b.bin").exists()


def test_trash_folder_planted_by_a_share_writer_is_refused(env: Env) -> None:
    """A share writer makes the trash folder first (his own, open to all), or
    a symlink in its place: the broker puts nothing there, and deletes nothing."""
    (env.outside / "trap").mkdir()
    (env.docs / TRASH_DIR).symlink_to(env.outside / "trap")
    with pytest.raises(ScopeError, match="not a folder"):
        env.run("file.delete", "share:docs/a.txt")
    (env.docs / TRASH_DIR).unlink()
    (env.docs / TRASH_DIR).mkdir(mode=0o777)
    os.chmod(env.docs / TRASH_DIR, 0o777)
    with pytest.raises(ExecutionError, match="not the broker's own"):
        env.run("file.delete", "share:docs/a.txt")
    assert (env.docs / "a.txt").read_text() == "alpha"
    assert os.listdir(env.outside / "trap") == [] and os.listdir(env.docs / TRASH_DIR) == []


def test_trash_undo_refuses_an_item_swapped_in_the_trash(env: Env) -> None:
    o = env.run("file.delete", "share:docs/a.txt")
    item = env.docs / TRASH_DIR / o.undo.trash
    os.rename(item, env.outside / "aside")
    item.write_text("alpha")  # another inode under the item's name
    with pytest.raises(ExecutionError, match="not what was deleted"):
        env.undo(o)
    item.unlink()
    with pytest.raises(ExecutionError, match="no longer in the trash"):
        env.undo(o)
    assert not (env.docs / "a.txt").exists()


def test_trash_undo_refuses_a_symlinked_parent(env: Env) -> None:
    """The folder the undo would write into is swapped for a symlink to
    outside: the walk refuses it, nothing is written outside."""
    o = env.run("file.delete", "share:docs/sub/deep/c.txt")
    os.rename(env.docs / "sub", env.docs / "sub.old")
    (env.docs / "sub").symlink_to(env.outside)
    with pytest.raises(ScopeError, match="symlink"):
        env.undo(o)
    assert sorted(os.listdir(env.outside)) == ["secret"]
    assert len(os.listdir(env.docs / TRASH_DIR)) == 1


def test_delete_with_parent_swapped_for_symlink_stays_inside(env: Env) -> None:
    """The parent directory is replaced by a symlink to outside between the
    resolution and the rename: the rename goes through the fd already held,
    so it moves the share's file, never the outside one."""
    (env.outside / "deep").mkdir()
    (env.outside / "deep" / "c.txt").write_text("OUTSIDE")

    def swap(snapshot_id: str | None, undo: UndoRecord) -> None:
        os.rename(env.docs / "sub", env.docs / "sub.old")
        (env.docs / "sub").symlink_to(env.outside)

    o = env.ops.execute("file.delete", env.t("share:docs/sub/deep/c.txt"), {}, before_change=swap)
    assert (env.outside / "deep" / "c.txt").read_text() == "OUTSIDE"
    assert not (env.docs / "sub.old" / "deep" / "c.txt").exists()
    assert [v[1] for v in trash(env.docs).values()] == [b"gamma"]
    # The undo walks again, sees the symlink and refuses rather than write outside.
    with pytest.raises(ScopeError, match="symlink"):
        env.undo(o)
    assert sorted(os.listdir(env.outside / "deep")) == ["c.txt"]


def test_delete_on_another_file_system_takes_a_snapshot(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the trash cannot be reached by a rename (EXDEV: a mount point
    inside the share), the content goes into the store first, and the undo
    rebuilds it; the snapshot limits and the budget apply there."""
    real = base.renameat2_noreplace

    def cross(a: int, b: str, c: int, d: str) -> None:
        if a != c:  # into the trash (another folder)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(a, b, c, d)

    monkeypatch.setattr(base, "renameat2_noreplace", cross)
    before = tree(env.docs, times=True)
    o = env.run("file.delete", "share:docs/sub")
    assert o.snapshot_id and o.result["trash"] is False and not (env.docs / "sub").exists()
    assert env.store.load(o.snapshot_id)["source"] == "share:docs/sub"
    assert env.keeper.items[-1] == Kept(f"snapshot:{o.snapshot_id}", "share:docs/sub", 11)
    env.undo(o)
    assert tree(env.docs, times=True) == before
    small = Env(env.base / "small", snapshot_bytes=8, snapshot_entries=3)
    (small.docs / "big").write_bytes(b"x" * 9)
    with pytest.raises(ExecutionError, match="snapshot limit"):
        small.run("file.delete", "share:docs/big")
    assert (small.docs / "big").exists()


# -- undo records -------------------------------------------------------------


def test_undo_records_are_checked(env: Env) -> None:
    o = env.run("file.delete", "share:docs/a.txt")
    good = o.undo.to_json()
    assert set(good) == {"verb", "target", "trash", "identity"}
    with pytest.raises(ExecutionError, match="malformed"):
        env.ops.undo(UndoRecord.from_json({"verb": "file.delete"}))
    with pytest.raises(ScopeError):
        env.ops.undo(UndoRecord.from_json({**good, "target": "share:docs/../../etc/x"}))
    with pytest.raises(ExecutionError, match="no longer in the trash"):
        env.ops.undo(UndoRecord.from_json({**good, "target": "share:photos/a.txt"}))
    for item in ("../../x", "..", "0" * 15, TRASH_DIR):
        with pytest.raises(ExecutionError, match="malformed"):
            UndoRecord.from_json({**good, "trash": item})
    for ident in ("x", {"kind": "link", "ino": 1, "btime_ns": 0, "size": 0, "mtime_ns": 0}):
        with pytest.raises(ExecutionError, match="malformed"):
            UndoRecord.from_json({**good, "identity": ident})
    with pytest.raises(ExecutionError, match="no undo"):
        env.ops.undo(UndoRecord.from_json({"verb": "file.read"}))
    with pytest.raises(ExecutionError, match="malformed"):
        env.ops.undo(
            UndoRecord.from_json(
                {"verb": "file.mkdir", "created": ["share:docs/x", "share:photos/y"]}
            )
        )
    assert not (env.docs / "a.txt").exists()


def legacy_snapshot(env: Env, resource: str) -> str:
    """What an earlier version stored before a move or delete: the content."""
    t = env.t(resource)
    with env.shares.open_parent(t) as (fd, name):
        found = walk_tree(fd, name, t, env.store, store=True, max_bytes=1 << 20, max_entries=100)
    return env.store.save(found.manifest)


def test_records_of_earlier_versions_are_still_undone(env: Env) -> None:
    """State directories written before the trash and the undo by inverse
    hold records naming a content snapshot: they undo as they did then."""
    before = tree(env.docs, times=True)
    sid = legacy_snapshot(env, "share:docs/sub")
    os.rename(env.docs / "sub", env.photos / "sub")  # what that move did
    move = {"verb": "file.move", "from": "share:docs/sub", "to": "share:photos/sub"}
    (env.photos / "sub" / "extra").write_text("x")
    with pytest.raises(ExecutionError, match="changed since the move"):
        env.ops.undo(UndoRecord.from_json({**move, "snapshot_id": sid}))
    (env.photos / "sub" / "extra").unlink()
    env.ops.undo(UndoRecord.from_json({**move, "snapshot_id": sid}))
    assert tree(env.docs, times=True) == before
    sid = legacy_snapshot(env, "share:docs/a.txt")
    (env.docs / "a.txt").unlink()  # what that delete did
    record = UndoRecord.from_json({"verb": "file.delete", "target": "share:docs/a.txt",
                                   "snapshot_id": sid})  # fmt: skip
    with pytest.raises(ExecutionError, match="disagree"):
        env.ops.undo(dataclasses.replace(record, target="share:photos/a.txt"))
    assert env.ops.undo(record) == {"restored": "share:docs/a.txt", "snapshot_id": sid}
    assert tree(env.docs, times=True) == before
    sha = hashlib.sha256(b"alpha").hexdigest()
    shutil.copy(env.docs / "a.txt", env.photos / "a.txt")  # what that copy did
    env.ops.undo(
        UndoRecord.from_json({"verb": "file.copy", "target": "share:photos/a.txt", "sha256": sha})
    )
    assert not (env.photos / "a.txt").exists()


def test_unknown_verb(env: Env) -> None:
    with pytest.raises(ExecutionError, match="unknown verb"):
        env.ops.execute("file.chmod", env.t("share:docs/a.txt"), {})


def test_store_inside_share_refused(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shares = Shares({"docs": tmp_path / "docs"}, LIMITS)
    with pytest.raises(ShareConfigError, match="overlaps"):
        FileOps(shares, SnapshotStore(tmp_path / "docs" / "snap"), LIMITS)


# -- the snapshot store -------------------------------------------------------


def test_store_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s")
    sha = store.put_bytes(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert store.put_bytes(b"hello") == sha
    assert store.blob_path(sha) == tmp_path / "s" / "objects" / sha[:2] / sha[2:]
    assert store.open_blob(sha).read() == b"hello"
    fd = os.open(tmp_path / "s" / "objects" / sha[:2] / sha[2:], os.O_RDONLY)
    try:
        os.lseek(fd, 3, os.SEEK_SET)  # reads from offset 0 regardless
        assert store.put_file_from_fd(fd) == sha
    finally:
        os.close(fd)
    m = {"version": 1, "kind": "file", "source": "share:x/f", "dirs": []}
    m["files"] = [{"path": "", "sha256": sha, "size": 5, "mode": 0o644, "mtime_ns": 1}]
    sid = store.save(m)
    assert sid == manifest_id(m) and store.save(m) == sid
    assert store.load(sid)["files"] == m["files"] and store.load(sid)["id"] == sid
    assert os.listdir(tmp_path / "s" / "tmp") == []


def test_store_refuses_missing_blobs_and_tampering(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s")
    m = {"kind": "file", "files": [{"path": "", "sha256": "0" * 64}], "dirs": []}
    with pytest.raises(SnapshotError, match="not stored"):
        store.save(m)
    m["files"][0]["sha256"] = store.put_bytes(b"x")
    sid = store.save(m)
    path = tmp_path / "s" / "manifests" / f"{sid}.json"
    path.write_text(path.read_text().replace('"file"', '"dir"'))
    with pytest.raises(SnapshotError, match="damaged"):
        store.load(sid)
    with pytest.raises(SnapshotError, match="malformed"):
        store.open_blob("../../etc/passwd")


def test_restore_refuses_damaged_blob(env: Env) -> None:
    sid = legacy_snapshot(env, "share:docs/a.txt")
    (env.docs / "a.txt").unlink()
    sha = env.store.load(sid)["files"][0]["sha256"]
    p = env.store.blob_path(sha)
    os.chmod(p, 0o600)
    p.write_bytes(b"tampered")
    record = {"verb": "file.delete", "target": "share:docs/a.txt", "snapshot_id": sid}
    with pytest.raises(SnapshotError, match="damaged"):
        env.ops.undo(UndoRecord.from_json(record))
    assert not (env.docs / "a.txt").exists() and junk(env.docs) == []


# -- crash and fault injection ------------------------------------------------

PATCHED = ("link", "unlink", "rename", "replace", "rmdir", "mkdir", "fsync", "utime", "fchmod")


class Crash(BaseException):
    """A simulated power cut: not an Exception, so no handler treats it as an error."""


class Faults:
    """Count the file system's mutating calls; fail the n-th one.

    crash: the n-th call and every later one raise Crash (the process is
    dead; nothing after it happens). error: only the n-th call raises an
    OSError (EIO) and the code may clean up.
    """

    def __init__(self, fail_at: int | None, mode: str):
        self.fail_at, self.mode = fail_at, mode
        self.count, self.dead = 0, False
        self.saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, name: str, fn: Callable) -> Callable:
        def wrapper(*a: Any, **kw: Any) -> Any:
            if self.dead:
                raise Crash(name)
            n = self.count
            self.count += 1
            if n == self.fail_at:
                if self.mode == "crash":
                    self.dead = True
                    raise Crash(name)
                raise OSError(errno.EIO, f"injected failure in {name}")
            return fn(*a, **kw)

        return wrapper

    def __enter__(self) -> Faults:
        targets = [(os, n) for n in PATCHED] + [
            (mod, "renameat2_noreplace") for mod in (fileops_mod, deleting, base)
        ]
        for mod, name in targets:
            fn = getattr(mod, name)
            self.saved.append((mod, name, fn))
            setattr(mod, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for mod, name, fn in self.saved:
            setattr(mod, name, fn)


def stored_contents(store: SnapshotStore) -> set[bytes]:
    """Contents recoverable from the store: blobs named by a saved manifest."""
    out = set()
    for sid in store.snapshot_ids():
        for f in store.load(sid)["files"]:
            data = store.blob_path(f["sha256"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"]
            out.add(data)
    return out


def trashed_contents(env: Env) -> set[bytes]:
    """Contents recoverable from the shares' trash folders."""
    return {v[1] for root in (env.docs, env.photos) for v in trash(root).values() if v[0] == "file"}


def files_of(env: Env) -> dict[tuple[str, str], bytes]:
    out = {}
    for share, root in (("docs", env.docs), ("photos", env.photos)):
        for rel, v in visible(root).items():
            if v[0] == "file":
                out[(share, rel)] = v[1]
    return out


# Each scenario: (name, setup run without faults, action given the setup's
# outcome, where each original file should end up).
Setup = Callable[[Env], Any]
Action = Callable[[Env, Any], Any]
Dest = Callable[[str, str], tuple[str, str]]


def _none(e: Env) -> None:
    return None


def _same(s: str, p: str) -> tuple[str, str]:
    return (s, p)


SCENARIOS: list[tuple[str, Setup, Action, Dest]] = [
    (
        "move file",
        _none,
        lambda e, _: e.run("file.move", "share:docs/a.txt", to="share:photos/a.txt"),
        lambda s, p: ("photos", "a.txt") if p == "a.txt" else (s, p),
    ),
    (
        "move dir",
        _none,
        lambda e, _: e.run("file.move", "share:docs/sub", to="share:photos/s"),
        lambda s, p: ("photos", "s" + p[3:]) if p.startswith("sub/") else (s, p),
    ),
    (
        "rename file",
        _none,
        lambda e, _: e.run("file.rename", "share:docs/sub/b.bin", name="z.bin"),
        lambda s, p: (s, "sub/z.bin") if p == "sub/b.bin" else (s, p),
    ),
    (
        "rename dir",
        _none,
        lambda e, _: e.run("file.rename", "share:docs/sub", name="s2"),
        lambda s, p: (s, "s2" + p[3:]) if p.startswith("sub/") else (s, p),
    ),
    ("delete file", _none, lambda e, _: e.run("file.delete", "share:docs/a.txt"), _same),
    ("delete dir", _none, lambda e, _: e.run("file.delete", "share:docs/sub"), _same),
    (
        "write",
        _none,
        lambda e, _: e.run("file.write", "share:docs/sub/w.txt", content="written"),
        _same,
    ),
    (
        "mkdir parents",
        _none,
        lambda e, _: e.run("file.mkdir", "share:docs/sub/x/y", parents=True),
        _same,
    ),
    (
        "copy",
        _none,
        lambda e, _: e.run("file.copy", "share:docs/a.txt", to="share:photos/c.txt"),
        _same,
    ),
    (
        "undo delete file",
        lambda e: e.run("file.delete", "share:docs/a.txt"),
        lambda e, o: e.undo(o),
        _same,
    ),
    (
        "undo delete dir",
        lambda e: e.run("file.delete", "share:docs/sub"),
        lambda e, o: e.undo(o),
        _same,
    ),
    (
        "undo move file",
        lambda e: e.run("file.move", "share:docs/a.txt", to="share:photos/a.txt"),
        lambda e, o: e.undo(o),
        lambda s, p: ("photos", "a.txt") if p == "a.txt" else (s, p),
    ),
    (
        "undo move dir",
        lambda e: e.run("file.move", "share:docs/sub", to="share:photos/s"),
        lambda e, o: e.undo(o),
        lambda s, p: ("photos", "s" + p[3:]) if p.startswith("sub/") else (s, p),
    ),
    (
        "undo write",
        lambda e: e.run("file.write", "share:docs/w.txt", content="written"),
        lambda e, o: e.undo(o),
        _same,
    ),
    (
        "undo mkdir parents",
        lambda e: e.run("file.mkdir", "share:docs/sub/x/y", parents=True),
        lambda e, o: e.undo(o),
        _same,
    ),
]


def run_with_fault(base: Path, setup: Setup, action: Action, fail_at: int | None, mode: str):
    env = Env(base)
    before = files_of(env)
    ctx = setup(env)
    before_visible = (visible(env.docs), visible(env.photos))
    faults = Faults(fail_at, mode)
    finished = True
    with faults:
        try:
            action(env, ctx)
        except (Crash, ApplianceError):
            finished = False
    return env, before, before_visible, faults, finished


@pytest.mark.parametrize("mode", ["crash", "error"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_no_content_is_ever_lost(tmp_path: Path, scenario: tuple, mode: str) -> None:
    name, setup, action, dest_of = scenario
    # A clean run counts the calls and gives the state a finished action leaves.
    env, _, _, faults, finished = run_with_fault(tmp_path / "clean", setup, action, None, mode)
    assert finished
    total = faults.count
    done_visible = (visible(env.docs), visible(env.photos))
    assert total >= 3, f"{name}: only {total} calls were intercepted"
    for n in range(total):
        env, before, before_visible, faults, finished = run_with_fault(
            tmp_path / f"run{n}", setup, action, n, mode
        )
        assert faults.count > n, f"{name}: call {n} never failed"
        now = files_of(env)
        recoverable = stored_contents(env.store) | trashed_contents(env)
        for (share, rel), data in before.items():
            dest = dest_of(share, rel)
            assert now.get((share, rel)) == data or now.get(dest) == data or data in recoverable, (
                f"{name}: {mode} at call {n}: {share}:{rel} is lost"
            )
        if mode == "error":
            # A plain error is not a crash: the action is done or not done,
            # never something in between.
            state = (visible(env.docs), visible(env.photos))
            if finished:
                assert state == done_visible, f"{name}: error at call {n} left a partial result"
            else:
                assert state == before_visible, f"{name}: error at call {n} left half-done state"
                assert junk(env.docs) == junk(env.photos) == [], f"{name}: junk at call {n}"
