"""The verbs that make something new (mkdir, write, copy), and their undo:
put what was made in the share's trash (folders: remove them, empty), if it
is still exactly what was made.

A copy runs in the kernel (fsutil.copy_content: a reflink where the file
system has them, else ``copy_file_range``) into a temporary name, is
fsync'd once and linked into place; its undo record holds the identity of
the copy, so neither the copy nor its undo reads the content in Python."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from typing import Any

from appliance.broker.files.base import FileActions, Kept, Outcome, handles
from appliance.broker.files.fsutil import (
    copy_content,
    hash_fd,
    os_error,
    settle,
)
from appliance.broker.files.identity import Identity, identity_at
from appliance.broker.files.trash import open_trash
from appliance.broker.files.undo import UndoRecord
from appliance.broker.scope import (
    Target,
    lstat_at,
    open_regular,
    open_subdir,
    refuse_special,
)
from appliance.errors import ApplianceError, ExecutionError


class Creating(FileActions):
    @handles("file.mkdir")
    def _mkdir(self, target: Target, params: dict[str, Any]) -> Outcome:
        parents = params.get("parents", False)
        if not isinstance(parents, bool):
            raise ExecutionError("params.parents must be true or false")
        if target.is_root:
            raise ExecutionError(f"{target.canonical} already exists")
        created: list[str] = []
        if not parents:
            with self.shares.open_parent(target) as (fd, name):
                self._mkdir_at(fd, name, target)
                created.append(target.canonical)
        else:
            with self.shares.open_dir(Target(target.share, ())) as root:
                fd = os.dup(root)
            try:
                for i, part in enumerate(target.parts):
                    here = Target(target.share, target.parts[: i + 1])
                    last = i == len(target.parts) - 1
                    if lstat_at(fd, part) is None or last:
                        self._mkdir_at(fd, part, here)
                        created.append(here.canonical)
                    nfd = open_subdir(fd, part, here.canonical)
                    os.close(fd)
                    fd = nfd
            except (OSError, ApplianceError):
                # Not half-done: remove what this call created (empty dirs).
                os.close(fd)
                fd = -1
                for made in reversed(created):
                    t = self.shares.parse(made)
                    with self.shares.open_parent(t) as (pfd, pname):
                        os.rmdir(pname, dir_fd=pfd)
                raise
            finally:
                if fd >= 0:
                    os.close(fd)
        undo = UndoRecord("file.mkdir", created=tuple(created))
        return Outcome({"resource": target.canonical, "created": created}, None, undo)

    def _mkdir_at(self, fd: int, name: str, target: Target) -> None:
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
        except FileExistsError:
            raise ExecutionError(f"{target.canonical} already exists") from None
        settle(fd)

    @handles("file.write")
    def _write(self, target: Target, params: dict[str, Any]) -> Outcome:
        content = params.get("content")
        encoding = params.get("encoding", "utf-8")
        if not isinstance(content, str):
            raise ExecutionError("params.content must be a string")
        if encoding == "utf-8":
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError:
                raise ExecutionError("params.content is not valid UTF-8") from None
        elif encoding == "base64":
            # Refuse before decoding what could only decode to too much.
            if len(content) > 4 * (self.limits.write_bytes // 3 + 1) + 4:
                raise ExecutionError(f"content is over the {self.limits.write_bytes} byte limit")
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise ExecutionError("params.content is not valid base64") from None
        else:
            raise ExecutionError("params.encoding must be 'utf-8' or 'base64'")
        if len(data) > self.limits.write_bytes:
            raise ExecutionError(
                f"content of {len(data)} bytes is over the {self.limits.write_bytes} byte limit"
            )
        with self.shares.open_parent(target) as (fd, name):
            if lstat_at(fd, name) is not None:
                raise ExecutionError(
                    f"{target.canonical} already exists; file.write never overwrites"
                )
            sha = self._materialize(fd, name, target, iter([data]), 0o644)
        undo = UndoRecord("file.write", target=target.canonical, sha256=sha)
        return Outcome({"resource": target.canonical, "size": len(data), "sha256": sha}, None, undo)

    @handles("file.copy")
    def _copy(self, target: Target, params: dict[str, Any]) -> Outcome:
        dest = self._to(params)
        if dest.is_root:
            raise ExecutionError(f"{dest.canonical} already exists")
        with self.shares.open_parent(target) as (sfd, sname):
            src = open_regular(sfd, sname, target.canonical)
        try:
            st = os.fstat(src)
            with self.shares.open_parent(dest) as (dfd, dname):
                if lstat_at(dfd, dname) is not None:
                    raise ExecutionError(f"{dest.canonical} already exists; copy never overwrites")
                self._room(dfd, st.st_size, dest)

                def fill(fd: int) -> str:
                    way = copy_content(src, fd)
                    after = os.fstat(src)
                    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                        raise ExecutionError(
                            f"{target.canonical} changed while being copied; nothing was done"
                        )
                    return way

                way = self._land(dfd, dname, dest, fill, stat.S_IMODE(st.st_mode))
                made = identity_at(dfd, dname)
        finally:
            os.close(src)
        if made is None:
            raise ExecutionError(f"{dest.canonical} vanished as it was made")
        undo = UndoRecord("file.copy", target=dest.canonical, identity=made)
        result = {"resource": target.canonical, "to": dest.canonical, "size": st.st_size}
        return Outcome({**result, "copied_by": way}, None, undo)

    def _undo_create(self, undo: UndoRecord) -> dict[str, Any]:
        target = self.shares.parse(undo.target)
        if target.is_root:
            raise ExecutionError("malformed undo record")
        with (
            self.shares.open_parent(target) as (fd, name),
            open_trash(self.shares, target.share, create=True) as tfd,
        ):
            assert tfd is not None  # made when missing
            st = lstat_at(fd, name)
            if st is None:
                raise ExecutionError(f"{target.canonical} no longer exists")
            if not stat.S_ISREG(st.st_mode):
                refuse_special(st.st_mode, target.canonical)
                raise ExecutionError(f"{target.canonical} is no longer a file")
            now = identity_at(fd, name)
            if now is None or not self._is_made(fd, name, target, undo, now):
                raise ExecutionError(f"{target.canonical} changed since it was created; keeping it")
            if st.st_dev != os.fstat(tfd).st_dev:
                return self._remove_by_snapshot(fd, name, target, now)
            # Into the trash, so that this undo destroys nothing either.
            self._check_same(fd, name, now, target)
            what = f"undoing {undo.verb} of {target.canonical}"
            self._into_trash(fd, name, tfd, target, st.st_size, what, lambda item: None)
        return {"removed": target.canonical, "trash": True}

    def _is_made(self, fd: int, name: str, target: Target, undo: UndoRecord, now: Identity) -> bool:
        """Still exactly what the action made: its identity, or (a write, an
        earlier copy) its content hash."""
        if undo.identity is not None:
            return undo.identity.same(now)
        f = open_regular(fd, name, target.canonical)
        try:
            return hash_fd(f) == undo.sha256
        finally:
            os.close(f)

    def _remove_by_snapshot(
        self, fd: int, name: str, target: Target, now: Identity
    ) -> dict[str, Any]:
        """On another file system than the share's trash: saved first, then removed."""
        self._admit(now.size, f"undoing the creation of {target.canonical}")
        tree = self._walk(fd, name, target, store=True)
        sid = self.snapshots.save(tree.manifest)
        self._kept(Kept(f"snapshot:{sid}", target.canonical, tree.size))
        self._check_same(fd, name, now, target)
        os.unlink(name, dir_fd=fd)
        settle(fd)
        return {"removed": target.canonical, "snapshot_id": sid}

    def _undo_mkdir(self, undo: UndoRecord) -> dict[str, Any]:
        created = list(undo.created)
        targets = [self.shares.parse(c) for c in created]
        # Each entry must be the parent of the next: a chain made by one mkdir.
        if any(t.is_root for t in targets) or any(
            b.parent() != a for a, b in zip(targets, targets[1:], strict=False)
        ):
            raise ExecutionError("malformed undo record")
        # Check everything before removing anything: each directory may hold
        # only the next one created, so the undo is all-or-nothing.
        for i, t in enumerate(targets):
            allowed = {targets[i + 1].name} if i + 1 < len(targets) else set()
            with self.shares.open_dir(t) as fd:
                extra = set(os.listdir(fd)) - allowed
            if extra:
                raise ExecutionError(f"{t.canonical} is not empty any more; keeping it")
        removed: list[Target] = []
        for t in reversed(targets):
            with self.shares.open_parent(t) as (fd, name):
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError as e:
                    # All-or-nothing: put back the (empty) directories removed so far.
                    for back in reversed(removed):
                        with self.shares.open_parent(back) as (bfd, bname):
                            os.mkdir(bname, 0o755, dir_fd=bfd)
                    raise os_error(f"cannot remove {t.canonical}", e) from None
                settle(fd)
            removed.append(t)
        return {"removed": created}
