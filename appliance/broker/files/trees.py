"""A file or folder as a snapshot manifest: walked (and stored, or only
hashed to compare) before an action changes it, and built again from the
store by an undo."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from appliance.broker.files.fsutil import MAX_DEPTH, at_rel, hash_fd, write_all
from appliance.broker.files.identity import Identity
from appliance.broker.scope import (
    Target,
    lstat_at,
    open_regular,
    open_subdir,
    refuse_special,
)
from appliance.broker.snapshots import CHUNK, MANIFEST_VERSION, SnapshotError, SnapshotStore
from appliance.errors import ExecutionError, ScopeError


@dataclass
class Tree:
    """A snapshot being built: the manifest plus what to re-check before acting."""

    manifest: dict[str, Any]
    # relative path -> (kind, inode, size, mtime_ns): the identity of what was copied.
    inventory: dict[str, tuple[str, int, int, int]]
    size: int

    def identity(self) -> Identity:
        """What was walked, at its top (no birth time: the walk reads fstat)."""
        kind, ino, size, mtime = self.inventory[""]
        return Identity(kind, ino, 0, size, mtime)


def tree_content(manifest: dict[str, Any]) -> tuple[Any, ...]:
    """What "the same content" means for undo: file paths and hashes, directory paths."""
    files = sorted((f["path"], f["sha256"]) for f in manifest["files"])
    dirs = sorted(d["path"] for d in manifest["dirs"])
    return manifest["kind"], files, dirs


def blob_chunks(store: SnapshotStore, sha: str) -> Iterator[bytes]:
    with store.open_blob(sha) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def walk_tree(
    dir_fd: int,
    name: str,
    target: Target,
    snapshots: SnapshotStore,
    *,
    store: bool,
    max_bytes: int,
    max_entries: int,
) -> Tree:
    """Walk ``name`` under ``dir_fd`` (file or tree) into a manifest.

    With ``store`` the content goes into the snapshot store; without, it is
    only hashed (to compare against an earlier snapshot).
    """
    files: list[dict[str, Any]] = []
    dirs: list[dict[str, Any]] = []
    inventory: dict[str, tuple[str, int, int, int]] = {}
    total = [0]

    def add_file(parent_fd: int, fname: str, rel: str) -> None:
        shown = f"{target.canonical}/{rel}" if rel else target.canonical
        fd = open_regular(parent_fd, fname, shown)
        try:
            st = os.fstat(fd)
            total[0] += st.st_size
            if total[0] > max_bytes:
                raise ExecutionError(
                    f"{target.canonical} is over the {max_bytes} byte snapshot "
                    "limit; refusing an action that could not be undone"
                )
            sha = snapshots.put_file_from_fd(fd) if store else hash_fd(fd)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise ExecutionError(f"{shown} changed while being saved; nothing was done")
        finally:
            os.close(fd)
        files.append(
            {
                "path": rel,
                "sha256": sha,
                "size": st.st_size,
                "mode": stat.S_IMODE(st.st_mode),
                "mtime_ns": st.st_mtime_ns,
            }
        )
        inventory[rel] = ("file", st.st_ino, st.st_size, st.st_mtime_ns)

    def walk(parent_fd: int, dname: str, rel: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ExecutionError(f"{target.canonical} is nested deeper than {MAX_DEPTH}")
        shown = f"{target.canonical}/{rel}" if rel else target.canonical
        fd = open_subdir(parent_fd, dname, shown)
        try:
            st = os.fstat(fd)
            dirs.append({"path": rel, "mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns})
            inventory[rel] = ("dir", st.st_ino, 0, 0)
            for child in sorted(os.listdir(fd)):
                crel = f"{rel}/{child}" if rel else child
                try:
                    child.encode("utf-8")
                except UnicodeEncodeError:
                    raise ScopeError(f"{shown} holds a name that is not UTF-8") from None
                if len(inventory) >= max_entries:
                    raise ExecutionError(
                        f"{target.canonical} has over {max_entries} entries; "
                        "refusing an action that could not be undone"
                    )
                cst = lstat_at(fd, child)
                if cst is None:
                    raise ExecutionError(f"{shown} changed while being saved")
                if stat.S_ISDIR(cst.st_mode):
                    walk(fd, child, crel, depth + 1)
                elif stat.S_ISREG(cst.st_mode):
                    add_file(fd, child, crel)
                else:
                    refuse_special(cst.st_mode, f"{target.canonical}/{crel}")
        finally:
            os.close(fd)

    st = lstat_at(dir_fd, name)
    if st is None:
        raise ExecutionError(f"{target.canonical} does not exist")
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
    if kind == "dir":
        walk(dir_fd, name, "", 0)
    else:
        add_file(dir_fd, name, "")
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": kind,
        "source": target.canonical,
        "files": files,
        "dirs": dirs,
    }
    return Tree(manifest, inventory, total[0])


def build_tree(
    parent_fd: int, top: str, manifest: dict[str, Any], snapshots: SnapshotStore
) -> None:
    dirs = sorted(manifest["dirs"], key=lambda d: d["path"].count("/") if d["path"] else -1)
    root_fd = open_subdir(parent_fd, top, top)
    try:
        for d in dirs:
            if d["path"]:
                at_rel(root_fd, d["path"], lambda fd, n: os.mkdir(n, 0o700, dir_fd=fd))
        for f in manifest["files"]:

            def put(fd: int, n: str, f: dict[str, Any] = f) -> None:
                out = os.open(
                    n, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd
                )
                try:
                    h = hashlib.sha256()
                    for chunk in blob_chunks(snapshots, f["sha256"]):
                        h.update(chunk)
                        write_all(out, chunk)
                    if h.hexdigest() != f["sha256"]:
                        raise SnapshotError(f"snapshot blob {f['sha256']} is damaged")
                    os.fchmod(out, f["mode"] & 0o777)
                    os.utime(out, ns=(f["mtime_ns"], f["mtime_ns"]))
                    os.fsync(out)
                finally:
                    os.close(out)

            at_rel(root_fd, f["path"], put)
        # Modes and times last, deepest first: creating entries bumps a
        # directory's mtime.
        for d in reversed(dirs):

            def fix(fd: int, n: str, d: dict[str, Any] = d) -> None:
                sub = open_subdir(fd, n, n)
                try:
                    os.fsync(sub)
                    os.fchmod(sub, d["mode"] & 0o777)
                    os.utime(sub, ns=(d["mtime_ns"], d["mtime_ns"]))
                finally:
                    os.close(sub)

            if d["path"]:
                at_rel(root_fd, d["path"], fix)
            else:
                fix(parent_fd, top)
    finally:
        os.close(root_fd)
