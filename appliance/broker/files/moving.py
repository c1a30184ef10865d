"""Move and rename, and their undo by inverse.

Nothing is destroyed by a move, so nothing is copied: the undo record holds
where it was, where it went and the identity of what moved (identity.py),
and the undo moves it back if what stands at the destination is still it.
Time and space do not depend on the size. A file is linked at its
destination before its source name goes (never zero names; a crash in
between leaves two names for one inode, which recovery settles); a folder
moves with one no-replace rename. Across file systems a file is copied
(temporary name, fsync, link) before its source goes; a folder is refused.
Records stored by earlier versions name a content snapshot instead of an
identity and are undone by comparing content, as they were then."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from typing import Any

from appliance.broker.files.base import FileActions, Outcome, handles
from appliance.broker.files.fsutil import (
    chunks,
    renameat2_noreplace,
    settle,
    unlink_if_same,
)
from appliance.broker.files.identity import Identity, identity_at
from appliance.broker.files.trees import tree_content
from appliance.broker.files.undo import UndoRecord
from appliance.broker.scope import (
    Target,
    check_name,
    fsync_dir,
    kind_of,
    lstat_at,
    open_regular,
    refuse_special,
)
from appliance.errors import ApplianceError, ExecutionError, ScopeError


class Moving(FileActions):
    @handles("file.move")
    def _move(self, target: Target, params: dict[str, Any]) -> Outcome:
        return self._relocate("file.move", target, self._to(params))

    @handles("file.rename")
    def _rename(self, target: Target, params: dict[str, Any]) -> Outcome:
        new = params.get("name")
        if not isinstance(new, str):
            raise ExecutionError("params.name must be a string")
        check_name(new, self.limits)
        if target.is_root:
            raise ScopeError("a share root cannot be renamed")
        dest = target.parent().child(new)
        if len(dest.canonical.encode()) > self.limits.path_bytes:
            raise ScopeError(f"the new path is over the {self.limits.path_bytes} byte limit")
        return self._relocate("file.rename", target, dest)

    def _relocate(self, verb: str, src: Target, dest: Target) -> Outcome:
        if src.is_root:
            raise ScopeError("a share root cannot be moved")
        if dest.is_root:
            raise ExecutionError(f"{dest.canonical} already exists")
        if src.contains(dest):
            raise ExecutionError(f"cannot move {src.canonical} into itself")
        with (
            self.shares.open_parent(src) as (sfd, sname),
            self.shares.open_parent(dest) as (dfd, dname),
        ):
            st = lstat_at(sfd, sname)
            if st is None:
                raise ExecutionError(f"{src.canonical} does not exist")
            refuse_special(st.st_mode, src.canonical)
            if lstat_at(dfd, dname) is not None:
                raise ExecutionError(f"{dest.canonical} already exists; never overwriting")
            ident = identity_at(sfd, sname)
            if ident is None:
                raise ExecutionError(f"{src.canonical} does not exist")
            undo = UndoRecord(verb, source=src.canonical, dest=dest.canonical, identity=ident)
            self._saved(None, undo)
            if stat.S_ISDIR(st.st_mode):
                self._rename_dir(sfd, sname, dfd, dname, src, dest)
            else:
                moved = self._move_file(sfd, sname, dfd, dname, src, dest, ident)
                if moved != ident:  # copied to another file system: a new inode
                    undo = dataclasses.replace(undo, identity=moved)
        result = {"resource": src.canonical, "to": dest.canonical, "type": kind_of(st.st_mode)}
        return Outcome(result, None, undo)

    def _rename_dir(
        self, sfd: int, sname: str, dfd: int, dname: str, src: Target, dest: Target
    ) -> None:
        try:
            renameat2_noreplace(sfd, sname, dfd, dname)
        except FileExistsError:
            raise ExecutionError(f"{dest.canonical} already exists; never overwriting") from None
        except OSError as e:
            if e.errno == errno.EXDEV:
                raise ExecutionError(
                    f"cannot move directory {src.canonical} to another file system"
                ) from None
            if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise ExecutionError(
                    "this file system cannot rename without replacing; refusing to risk it"
                ) from None
            raise
        settle(dfd)
        settle(sfd)

    def _move_file(
        self,
        sfd: int,
        sname: str,
        dfd: int,
        dname: str,
        src: Target,
        dest: Target,
        ident: Identity,
    ) -> Identity:
        """Link at the destination, then unlink the source: never zero names.
        Returns the identity of the file at the destination."""
        self._check_same(sfd, sname, ident, src)
        try:
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            raise ExecutionError(f"{dest.canonical} already exists; never overwriting") from None
        except OSError as e:
            if e.errno == errno.EXDEV:
                return self._move_file_across(sfd, sname, dfd, dname, src, dest, ident)
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:  # no hard links on this file system: atomic no-replace rename
                renameat2_noreplace(sfd, sname, dfd, dname)
            except FileExistsError:
                raise ExecutionError(
                    f"{dest.canonical} already exists; never overwriting"
                ) from None
            settle(dfd)
            settle(sfd)
            return ident
        try:
            self._check_same(dfd, dname, ident, src)
            fsync_dir(dfd)
            self._check_same(sfd, sname, ident, src)
            os.unlink(sname, dir_fd=sfd)
        except (OSError, ApplianceError):
            # Roll back to "not moved": the source name still holds the file.
            unlink_if_same(dfd, dname, ident.ino)
            raise
        settle(sfd)
        return ident

    def _move_file_across(
        self,
        sfd: int,
        sname: str,
        dfd: int,
        dname: str,
        src: Target,
        dest: Target,
        ident: Identity,
    ) -> Identity:
        """Another file system: copy, fsync, link into place, then unlink the source."""
        fd = open_regular(sfd, sname, src.canonical)
        try:
            st = os.fstat(fd)
            mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
            self._materialize(dfd, dname, dest, chunks(fd), mode, mtime_ns=mtime)
        finally:
            os.close(fd)
        made = identity_at(dfd, dname)
        try:
            self._check_same(sfd, sname, ident, src)
            os.unlink(sname, dir_fd=sfd)
        except (OSError, ApplianceError):
            if made is not None:
                unlink_if_same(dfd, dname, made.ino)
            raise
        settle(sfd)
        assert made is not None  # linked into place just above
        return made

    def _undo_move(self, undo: UndoRecord) -> dict[str, Any]:
        src = self.shares.parse(undo.source)
        dest = self.shares.parse(undo.dest)
        if src.is_root or dest.is_root or dest.contains(src):
            raise ExecutionError("malformed undo record")
        manifest = self.snapshots.load(undo.snapshot_id) if undo.identity is None else None
        if manifest is not None and manifest.get("source") != src.canonical:
            raise ExecutionError("undo record and snapshot disagree about the path")
        with (
            self.shares.open_parent(dest) as (dfd, dname),
            self.shares.open_parent(src) as (sfd, sname),
        ):
            st = lstat_at(dfd, dname)
            if st is None:
                raise ExecutionError(f"{dest.canonical} no longer exists; cannot move it back")
            refuse_special(st.st_mode, dest.canonical)
            if lstat_at(sfd, sname) is not None:
                raise ExecutionError(f"{src.canonical} is taken now; not moving back over it")
            now = identity_at(dfd, dname)
            if undo.identity is not None and not undo.identity.same(now):
                raise ExecutionError(
                    f"{dest.canonical} is not what was moved there (replaced or changed since "
                    "the move); not moving it back"
                )
            if manifest is not None:  # an earlier record: compare the content
                tree = self._walk(dfd, dname, dest, store=False)
                if tree_content(tree.manifest) != tree_content(manifest):
                    raise ExecutionError(
                        f"{dest.canonical} changed since the move; not moving it back"
                    )
                now = tree.identity()
            if now is None:
                raise ExecutionError(f"{dest.canonical} no longer exists; cannot move it back")
            if stat.S_ISDIR(st.st_mode):
                self._rename_dir(dfd, dname, sfd, sname, dest, src)
            else:
                self._move_file(dfd, dname, sfd, sname, dest, src, now)
        return {"moved_back": dest.canonical, "to": src.canonical}
