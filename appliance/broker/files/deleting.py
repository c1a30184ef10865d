"""Delete into the share's trash, and its undo.

A delete is a rename into the share's trash folder (trash.py): one step,
whatever the size, nothing copied. The undo renames it back, if the item in
the trash is still what was put there and its old name is free. Only a
delete of something on another file system than the share's root (a mount
point inside the share) cannot be renamed there; it is snapshotted into the
store first and then removed, as every delete was before, and its undo
rebuilds it from the snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from typing import Any

from appliance.broker.files.base import FileActions, Kept, Outcome, handles
from appliance.broker.files.fsutil import (
    DELETING_PREFIX,
    remove_tree,
    renameat2_noreplace,
    settle,
    tmp_name,
)
from appliance.broker.files.identity import Identity, identity_at
from appliance.broker.files.trash import measure, open_trash
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
        with (
            self.shares.open_parent(target) as (fd, name),
            open_trash(self.shares, target.share, create=True) as tfd,
        ):
            assert tfd is not None  # made when missing
            st = lstat_at(fd, name)
            if st is None:
                raise ExecutionError(f"{target.canonical} does not exist")
            refuse_special(st.st_mode, target.canonical)
            result: dict[str, Any] = {"resource": target.canonical, "type": kind_of(st.st_mode)}
            if st.st_dev == os.fstat(tfd).st_dev:
                outcome = self._to_trash(fd, name, tfd, target, result)
                if outcome is not None:
                    return outcome
            return self._delete_by_snapshot(fd, name, st, target, result)

    def _to_trash(
        self, fd: int, name: str, tfd: int, target: Target, result: dict[str, Any]
    ) -> Outcome | None:
        """Rename into the trash; None when the kernel says it is another
        file system after all (a bind mount), for the snapshot way."""
        size, files = measure(fd, name)
        ident = identity_at(fd, name)
        if ident is None:
            raise ExecutionError(f"{target.canonical} does not exist")
        made: list[UndoRecord] = []

        def record(item: str) -> UndoRecord:
            made.append(
                UndoRecord("file.delete", target=target.canonical, trash=item, identity=ident)
            )
            return made[0]

        try:
            self._into_trash(fd, name, tfd, target, size, f"deleting {target.canonical}", record)
        except OSError as e:
            if e.errno == errno.EXDEV:
                return None
            raise
        undo = made[0]
        return Outcome({**result, "files": files, "bytes": size, "trash": True}, None, undo)

    def _delete_by_snapshot(
        self, fd: int, name: str, st: os.stat_result, target: Target, result: dict[str, Any]
    ) -> Outcome:
        """Another file system than the trash: the content into the store, then remove."""
        size, _ = measure(fd, name)
        self._admit(size, f"deleting {target.canonical} (a snapshot: another file system)")
        tree = self._walk(fd, name, target, store=True)
        sid = self.snapshots.save(tree.manifest)
        self._kept(Kept(f"snapshot:{sid}", target.canonical, tree.size))
        undo = UndoRecord("file.delete", target=target.canonical, snapshot_id=sid)
        self._saved(sid, undo)
        result.update(files=len(tree.manifest["files"]), bytes=tree.size, trash=False)
        if stat.S_ISDIR(st.st_mode):
            leftover = self._delete_dir(fd, name, target, tree)
            if leftover:
                result["leftover"] = leftover
        else:
            self._check_same(fd, name, tree.identity(), target)
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
        if target.is_root:
            raise ExecutionError("malformed undo record")
        if undo.identity is not None:
            return self._from_trash(target, undo.trash, undo.identity)
        sid = undo.snapshot_id
        manifest = self.snapshots.load(sid)
        if manifest.get("source") != target.canonical:
            raise ExecutionError("undo record and snapshot disagree about the path")
        self._restore(target, manifest)
        return {"restored": target.canonical, "snapshot_id": sid}

    def _from_trash(self, target: Target, item: str, ident: Identity) -> dict[str, Any]:
        """Rename the item back out of the trash, if it is still what went in."""
        with (
            open_trash(self.shares, target.share, create=False) as tfd,
            self.shares.open_parent(target) as (fd, name),
        ):
            now = identity_at(tfd, item) if tfd is not None else None
            if tfd is None or now is None:
                raise ExecutionError(
                    f"what was deleted from {target.canonical} is no longer in the trash"
                )
            if not ident.same(now):
                raise ExecutionError(
                    f"the trash item for {target.canonical} is not what was deleted "
                    "(replaced or changed since); not restoring it"
                )
            if lstat_at(fd, name) is not None:
                raise ExecutionError(f"{target.canonical} is taken now; not restoring over it")
            try:
                renameat2_noreplace(tfd, item, fd, name)
            except FileExistsError:
                raise ExecutionError(
                    f"{target.canonical} is taken now; not restoring over it"
                ) from None
            except OSError as e:
                if e.errno == errno.EXDEV:
                    raise ExecutionError(
                        f"{target.canonical} is now on another file system than the trash; "
                        "not restoring it there"
                    ) from None
                raise
            settle(fd)
            settle(tfd)
        return {"restored": target.canonical, "from_trash": True}

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
