"""Delete (the snapshot first, then the removal) and its undo (the
snapshot put back where the thing was, if that name is free)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from typing import Any

from appliance.broker.files.base import FileActions, Outcome, handles
from appliance.broker.files.fsutil import (
    DELETING_PREFIX,
    remove_tree,
    renameat2_noreplace,
    settle,
    tmp_name,
)
from appliance.broker.files.trees import Tree, blob_chunks, build_tree
from appliance.broker.files.undo import UndoRecord
from appliance.broker.scope import (
    Target,
    fsync_dir,
    kind_of,
    lstat_at,
    refuse_special,
)
from appliance.errors import ExecutionError, ScopeError


class Deleting(FileActions):
    @handles("file.delete")
    def _delete(self, target: Target, params: dict[str, Any]) -> Outcome:
        if target.is_root:
            raise ScopeError("a share root cannot be deleted")
        with self.shares.open_parent(target) as (fd, name):
            st = lstat_at(fd, name)
            if st is None:
                raise ExecutionError(f"{target.canonical} does not exist")
            refuse_special(st.st_mode, target.canonical)
            tree = self._walk(fd, name, target, store=True)
            sid = self.snapshots.save(tree.manifest)
            undo = UndoRecord("file.delete", target=target.canonical, snapshot_id=sid)
            self._saved(sid, undo)
            result: dict[str, Any] = {
                "resource": target.canonical,
                "type": kind_of(st.st_mode),
                "files": len(tree.manifest["files"]),
                "bytes": tree.size,
            }
            if stat.S_ISDIR(st.st_mode):
                leftover = self._delete_dir(fd, name, target, tree)
                if leftover:
                    result["leftover"] = leftover
            else:
                self._check_same(fd, name, tree.inventory[""], target)
                os.unlink(name, dir_fd=fd)
                settle(fd)
        return Outcome(result, sid, undo)

    def _delete_dir(self, fd: int, name: str, target: Target, tree: Tree) -> str | None:
        """Rename the directory out of the way atomically, check it, then remove it.

        The rename is the moment of deletion as anyone sees it; the snapshot
        was saved before it. If the tree changed after the snapshot, the
        directory is renamed back and the delete refused.
        """
        hidden = DELETING_PREFIX + secrets.token_hex(8)
        try:
            renameat2_noreplace(fd, name, fd, hidden)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise ExecutionError(
                    "this file system cannot rename without replacing; refusing to delete"
                ) from None
            raise
        try:
            fsync_dir(fd)
            now = self._walk(fd, hidden, target, store=False)
        except BaseException:
            renameat2_noreplace(fd, hidden, fd, name)
            raise
        if now.inventory != tree.inventory:
            renameat2_noreplace(fd, hidden, fd, name)
            raise ExecutionError(
                f"{target.canonical} changed while being deleted; nothing was done"
            )
        try:
            remove_tree(fd, hidden)
        except OSError:
            # Deleted as far as anyone can see, and saved in the snapshot; the
            # hidden remains are unaddressable and can be removed by hand.
            return hidden
        settle(fd)
        return None

    def _undo_delete(self, undo: UndoRecord) -> dict[str, Any]:
        target = self.shares.parse(undo.target)
        sid = undo.snapshot_id
        manifest = self.snapshots.load(sid)
        if manifest.get("source") != target.canonical:
            raise ExecutionError("undo record and snapshot disagree about the path")
        self._restore(target, manifest)
        return {"restored": target.canonical, "snapshot_id": sid}

    def _restore(self, target: Target, manifest: dict[str, Any]) -> None:
        """Put a snapshot back at ``target``, which must be free."""
        with self.shares.open_parent(target) as (fd, name):
            if lstat_at(fd, name) is not None:
                raise ExecutionError(f"{target.canonical} is taken now; not restoring over it")
            if manifest["kind"] == "file":
                entry = manifest["files"][0]
                self._materialize(
                    fd,
                    name,
                    target,
                    blob_chunks(self.snapshots, entry["sha256"]),
                    entry["mode"],
                    mtime_ns=entry["mtime_ns"],
                    expect_sha=entry["sha256"],
                )
                return
            # A directory is rebuilt under a reserved temporary name and put in
            # place with one no-replace rename: it appears whole or not at all.
            tmp = tmp_name()
            os.mkdir(tmp, 0o700, dir_fd=fd)
            try:
                build_tree(fd, tmp, manifest, self.snapshots)
                renameat2_noreplace(fd, tmp, fd, name)
            except BaseException as e:
                # On failure: a reserved-name leftover; the snapshot is untouched.
                with contextlib.suppress(OSError):
                    remove_tree(fd, tmp)
                if isinstance(e, FileExistsError):
                    raise ExecutionError(
                        f"{target.canonical} is taken now; not restoring over it"
                    ) from None
                raise
            settle(fd)
