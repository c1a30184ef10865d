"""The file actions the broker executes, each with a snapshot and an undo.

Rules every verb follows (docs/files.md has the per-verb order):

* All access goes through :class:`~appliance.broker.scope.Shares` directory
  fds; final names are handled with ``*at()`` calls, never by path string.
* Never overwrite: files land with ``link()`` (fails if the name exists),
  directories with ``renameat2(RENAME_NOREPLACE)``.
* Snapshot first: whatever is about to change or disappear is copied into the
  :class:`~appliance.broker.snapshots.SnapshotStore` and its manifest saved
  (fsynced) before the first change. So a crash at any point leaves every
  original file's content at its source, at its destination, or in the store.
* A failure half-way (an OSError, not a crash) is rolled back where that is
  possible, so the caller sees "done" or "not done", not something between.
* Undo records are plain JSON; an undo re-checks that nothing changed since
  (content hashes, free paths) and refuses with a reason otherwise.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import errno
import hashlib
import os
import platform
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from appliance.broker.scope import (
    DIR_FLAGS,
    RESERVED_PREFIX,
    ShareConfigError,
    Shares,
    Target,
    check_name,
    fsync_dir,
    kind_of,
    lstat_at,
    name_ok,
    open_regular,
    open_subdir,
    refuse_special,
)
from appliance.broker.snapshots import CHUNK, MANIFEST_VERSION, SnapshotError, SnapshotStore
from appliance.config import Limits
from appliance.errors import ApplianceError, ExecutionError, ScopeError

TMP_PREFIX = RESERVED_PREFIX + "tmp-"
DELETING_PREFIX = RESERVED_PREFIX + "deleting-"
# Exactly the names _tmp_name() and _delete_dir() make, and nothing else.
LEFTOVER_RE = re.compile(r"\.appliance-(?:tmp|deleting)-[0-9a-f]{16}\Z")
MAX_DEPTH = 128  # directory nesting walked by snapshots (each level holds an fd)
RENAME_NOREPLACE = 1
# renameat2 syscall numbers, used only when libc lacks the wrapper (glibc < 2.28).
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "armv7l": 382, "riscv64": 276}

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2_fn: Callable[..., int] | None
if hasattr(_libc, "renameat2"):
    _renameat2_fn = _libc.renameat2
    _renameat2_fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    _renameat2_fn.argtypes += [ctypes.c_uint]
elif platform.machine() in _SYS_RENAMEAT2:
    _nr = _SYS_RENAMEAT2[platform.machine()]

    def _renameat2_fn(a: int, b: bytes, c: int, d: bytes, f: int) -> int:  # type: ignore[misc]
        return _libc.syscall(_nr, a, b, c, d, ctypes.c_uint(f))
else:  # pragma: no cover - exotic platforms
    _renameat2_fn = None


def renameat2_noreplace(old_dir_fd: int, old: str, new_dir_fd: int, new: str) -> None:
    """``renameat2(..., RENAME_NOREPLACE)``: an atomic rename that never replaces.

    Raises ``FileExistsError`` if ``new`` exists, ``OSError(ENOSYS)`` when the
    kernel or libc cannot do it (callers refuse rather than fall back to a
    rename that could overwrite).
    """
    if _renameat2_fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    rc = _renameat2_fn(old_dir_fd, os.fsencode(old), new_dir_fd, os.fsencode(new), RENAME_NOREPLACE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class Outcome:
    """What an action did: its JSON result, the snapshot taken first, the undo record."""

    result: dict[str, Any]
    snapshot_id: str | None = None
    undo: dict[str, Any] | None = None


@dataclass
class _Tree:
    """A snapshot being built: the manifest plus what to re-check before acting."""

    manifest: dict[str, Any]
    # relative path -> (kind, inode, size, mtime_ns): the identity of what was copied.
    inventory: dict[str, tuple[str, int, int, int]]
    size: int


def _tmp_name() -> str:
    return TMP_PREFIX + secrets.token_hex(8)


def _err(what: str, e: OSError) -> ExecutionError:
    return ExecutionError(f"{what}: {e.strerror or e}")


class FileOps:
    """Executes the ``file.*`` verbs on targets inside the shares."""

    def __init__(
        self,
        shares: Shares,
        snapshots: SnapshotStore,
        limits: Limits,
        *,
        snapshot_bytes: int = 1 << 30,
        snapshot_entries: int = 100_000,
    ):
        self.shares = shares
        self.snapshots = snapshots
        self.limits = limits
        # Largest tree (bytes, entries) a move/delete may snapshot: past this
        # the action is refused rather than done without a way back.
        self.snapshot_bytes = snapshot_bytes
        self.snapshot_entries = snapshot_entries
        store = snapshots.directory.resolve()
        for name in shares.names:
            root = shares.root(name)
            if store == root or root in store.parents or store in root.parents:
                # A store inside a share would let share users read or forge
                # snapshots; a share inside the store would be odder still.
                raise ShareConfigError(f"snapshot store {store} overlaps share {name} ({root})")
        # One mutation at a time: the checks each verb makes (free names,
        # unchanged inodes) are only meaningful if the broker is not racing itself.
        self._lock = threading.RLock()
        self._before_change: Callable[[str, dict[str, Any]], None] | None = None
        self._verbs: dict[str, Callable[[Target, dict[str, Any]], Outcome]] = {
            "file.list": self._list,
            "file.stat": self._stat,
            "file.read": self._read,
            "file.mkdir": self._mkdir,
            "file.copy": self._copy,
            "file.move": self._move,
            "file.rename": self._rename,
            "file.write": self._write,
            "file.delete": self._delete,
        }

    # -- entry points ---------------------------------------------------------

    def execute(
        self,
        verb: str,
        target: Target,
        params: dict[str, Any],
        *,
        before_change: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> Outcome:
        """Run one verb on one already-parsed target. Raises ApplianceError subclasses.

        ``before_change(snapshot_id, undo)`` is called for a move, rename or
        delete once the snapshot is saved and before anything changes, so the
        caller can record how to undo an action that a crash interrupts.
        """
        handler = self._verbs.get(verb)
        if handler is None:
            raise ExecutionError(f"unknown verb {verb!r}")
        if not isinstance(target, Target):
            raise ExecutionError("target must be a parsed Target")
        with self._lock:
            self._before_change = before_change
            try:
                return handler(target, dict(params or {}))
            except ApplianceError:
                raise
            except OSError as e:
                raise _err(f"{verb} on {target.canonical} failed", e) from None
            finally:
                self._before_change = None

    def _saved(self, snapshot_id: str, undo: dict[str, Any]) -> None:
        if self._before_change is not None:
            self._before_change(snapshot_id, undo)

    def settle_interrupted(self, undo: dict[str, Any]) -> bool:
        """After a crash in the middle of a move, rename or delete: bring it to
        exactly "before" or exactly "after", and say whether it took effect
        (then its undo record applies).

        A file move links the destination before it unlinks the source, so a
        crash in between leaves two names for one inode: the destination name
        is removed again (before). Only a destination left alone means after.
        """
        verb = undo.get("verb")
        with self._lock:
            try:
                if verb == "file.delete":
                    target = self._undo_target(undo, "target")
                    with self.shares.open_parent(target) as (fd, name):
                        return lstat_at(fd, name) is None
                if verb in ("file.move", "file.rename"):
                    src = self._undo_target(undo, "from")
                    dest = self._undo_target(undo, "to")
                    with (
                        self.shares.open_parent(src) as (sfd, sname),
                        self.shares.open_parent(dest) as (dfd, dname),
                    ):
                        s, d = lstat_at(sfd, sname), lstat_at(dfd, dname)
                        if (
                            s is not None
                            and d is not None
                            and stat.S_ISREG(d.st_mode)
                            and ((s.st_dev, s.st_ino) == (d.st_dev, d.st_ino))
                        ):
                            _unlink_if_same(dfd, dname, d.st_ino)
                            fsync_dir(dfd)
                            return False
                        return s is None and d is not None
            except (ApplianceError, OSError):
                return False  # a parent vanished: leave things as they are
        return False

    def sweep_leftovers(self, targets: Iterable[Target]) -> list[str]:
        """After a crash, when nothing is in flight: remove the hidden names an
        interrupted action can leave beside the targets it worked on.

        A write, copy or restore builds its file (or tree) under
        ``.appliance-tmp-*`` and a directory delete renames the tree to
        ``.appliance-deleting-*``, both in the target's own directory; neither
        holds anything that is not either at its final name or in the snapshot
        store. Only those directories are looked at, only names of exactly that
        form are removed, and never through a symlink. Returns what was removed.
        """
        removed: list[str] = []
        with self._lock:
            for parent in {t.parent() for t in targets if not t.is_root}:
                try:
                    with self.shares.open_dir(parent) as fd:
                        for name in sorted(os.listdir(fd)):
                            st = lstat_at(fd, name) if LEFTOVER_RE.match(name) else None
                            if st is None:
                                continue
                            if stat.S_ISDIR(st.st_mode):
                                _remove_tree(fd, name)
                            elif stat.S_ISREG(st.st_mode):
                                os.unlink(name, dir_fd=fd)
                            else:
                                continue
                            removed.append(parent.child(name).canonical)
                        _settle(fd)
                except (ApplianceError, OSError):
                    continue  # the directory is gone or unreadable: nothing to sweep there
        return removed

    def undo(self, undo: dict[str, Any]) -> dict[str, Any]:
        """Reverse an action from its undo record, if nothing changed since."""
        if not isinstance(undo, dict) or not isinstance(undo.get("verb"), str):
            raise ExecutionError("malformed undo record")
        verb = undo["verb"]
        with self._lock:
            try:
                if verb == "file.delete":
                    return self._undo_delete(undo)
                if verb in ("file.move", "file.rename"):
                    return self._undo_move(undo)
                if verb in ("file.write", "file.copy"):
                    return self._undo_create(undo)
                if verb == "file.mkdir":
                    return self._undo_mkdir(undo)
            except ApplianceError:
                raise
            except OSError as e:
                raise _err(f"undo of {verb} failed", e) from None
        raise ExecutionError(f"{verb} has no undo")

    # -- reading --------------------------------------------------------------

    def _list(self, target: Target, params: dict[str, Any]) -> Outcome:
        with self.shares.open_dir(target) as fd:
            names = os.listdir(fd)
            ok = sorted(n for n in names if name_ok(n, self.limits))
            skipped = len(names) - len(ok)
            truncated = len(ok) > self.limits.list_entries
            entries = []
            for name in ok[: self.limits.list_entries]:
                st = lstat_at(fd, name)
                if st is None:
                    continue  # removed while listing
                kind = kind_of(st.st_mode)
                entries.append(
                    {
                        "name": name,
                        "type": kind,
                        "size": st.st_size if kind == "file" else 0,
                        "mtime": st.st_mtime,
                    }
                )
        result = {
            "resource": target.canonical,
            "entries": entries,
            "truncated": truncated,
            # Names that cannot be addressed (control characters, not UTF-8,
            # reserved broker names) are counted, not shown.
            "skipped": skipped,
        }
        return Outcome(result)

    def _stat(self, target: Target, params: dict[str, Any]) -> Outcome:
        if target.is_root:
            with self.shares.open_dir(target) as fd:
                st = os.fstat(fd)
        else:
            with self.shares.open_parent(target) as (fd, name):
                st = lstat_at(fd, name)
            if st is None:
                raise ExecutionError(f"{target.canonical} does not exist")
        kind = kind_of(st.st_mode)
        return Outcome(
            {
                "resource": target.canonical,
                "type": kind,
                "size": st.st_size if kind == "file" else 0,
                "mtime": st.st_mtime,
                "mode": stat.S_IMODE(st.st_mode),
            }
        )

    def _read(self, target: Target, params: dict[str, Any]) -> Outcome:
        max_bytes = params.get("max_bytes", self.limits.read_bytes)
        offset = params.get("offset", 0)
        for key, value in (("max_bytes", max_bytes), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ExecutionError(f"params.{key} must be a non-negative integer")
        max_bytes = min(max_bytes, self.limits.read_bytes)
        with self.shares.open_parent(target) as (dfd, name):
            fd = open_regular(dfd, name, target.canonical)
        try:
            size = os.fstat(fd).st_size
            data = b""
            while len(data) < max_bytes:
                chunk = os.pread(fd, max_bytes - len(data), offset + len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        try:
            content, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode("ascii"), "base64"
        return Outcome(
            {
                "resource": target.canonical,
                "content": content,
                "encoding": encoding,
                "size": size,
                "offset": offset,
                "length": len(data),
                "truncated": offset + len(data) < size,
            }
        )

    # -- creating -------------------------------------------------------------

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
        undo = {"verb": "file.mkdir", "created": created}
        return Outcome({"resource": target.canonical, "created": created}, None, undo)

    def _mkdir_at(self, fd: int, name: str, target: Target) -> None:
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
        except FileExistsError:
            raise ExecutionError(f"{target.canonical} already exists") from None
        _settle(fd)

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
        undo = {"verb": "file.write", "target": target.canonical, "sha256": sha}
        return Outcome({"resource": target.canonical, "size": len(data), "sha256": sha}, None, undo)

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
                sha = self._materialize(dfd, dname, dest, _chunks(src), stat.S_IMODE(st.st_mode))
        finally:
            os.close(src)
        undo = {"verb": "file.copy", "target": dest.canonical, "sha256": sha}
        result = {"resource": target.canonical, "to": dest.canonical, "size": st.st_size}
        return Outcome({**result, "sha256": sha}, None, undo)

    def _materialize(
        self,
        dir_fd: int,
        name: str,
        target: Target,
        chunks: Any,
        mode: int,
        *,
        mtime_ns: int | None = None,
        expect_sha: str | None = None,
    ) -> str:
        """Create ``name`` with the given bytes: temp file, fsync, link into place.

        The name appears complete or not at all, and ``link()`` refuses an
        existing name, so nothing is ever overwritten.
        """
        tmp = _tmp_name()
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            h = hashlib.sha256()
            try:
                for chunk in chunks:
                    h.update(chunk)
                    _write_all(fd, chunk)
                sha = h.hexdigest()
                if expect_sha is not None and sha != expect_sha:
                    raise SnapshotError(f"snapshot blob {expect_sha} is damaged; not restoring it")
                os.fchmod(fd, mode & 0o777)
                if mtime_ns is not None:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._link_into_place(dir_fd, tmp, name, target)
        except BaseException:
            _unlink_quietly(dir_fd, tmp)
            raise
        _unlink_quietly(dir_fd, tmp)
        _settle(dir_fd)
        return sha

    def _link_into_place(self, dir_fd: int, tmp: str, name: str, target: Target) -> None:
        try:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise ExecutionError(f"{target.canonical} already exists; never overwriting") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # File systems without hard links (exFAT sticks): the atomic
            # no-replace rename gives the same guarantee.
            try:
                renameat2_noreplace(dir_fd, tmp, dir_fd, name)
            except FileExistsError:
                raise ExecutionError(
                    f"{target.canonical} already exists; never overwriting"
                ) from None

    # -- moving ---------------------------------------------------------------

    def _to(self, params: dict[str, Any]) -> Target:
        dest = params.get("to")
        if not isinstance(dest, Target):
            raise ExecutionError("params.to must be a resolved target")
        return dest

    def _move(self, target: Target, params: dict[str, Any]) -> Outcome:
        return self._relocate("file.move", target, self._to(params))

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
            tree = self._snapshot(sfd, sname, src, store=True)
            sid = self.snapshots.save(tree.manifest)
            undo = {"verb": verb, "from": src.canonical, "to": dest.canonical, "snapshot_id": sid}
            self._saved(sid, undo)
            if stat.S_ISDIR(st.st_mode):
                self._rename_dir(sfd, sname, dfd, dname, src, dest)
            else:
                self._move_file(sfd, sname, dfd, dname, src, dest, tree.inventory[""])
        result = {"resource": src.canonical, "to": dest.canonical, "type": kind_of(st.st_mode)}
        return Outcome(result, sid, undo)

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
        _settle(dfd)
        _settle(sfd)

    def _move_file(
        self,
        sfd: int,
        sname: str,
        dfd: int,
        dname: str,
        src: Target,
        dest: Target,
        ident: tuple[str, int, int, int],
    ) -> None:
        """Link at the destination, then unlink the source: never zero names."""
        self._check_same(sfd, sname, ident, src)
        try:
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            raise ExecutionError(f"{dest.canonical} already exists; never overwriting") from None
        except OSError as e:
            if e.errno == errno.EXDEV:
                self._move_file_across(sfd, sname, dfd, dname, src, dest, ident)
                return
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:  # no hard links on this file system: atomic no-replace rename
                renameat2_noreplace(sfd, sname, dfd, dname)
            except FileExistsError:
                raise ExecutionError(
                    f"{dest.canonical} already exists; never overwriting"
                ) from None
            _settle(dfd)
            _settle(sfd)
            return
        try:
            self._check_same(dfd, dname, ident, src)
            fsync_dir(dfd)
            self._check_same(sfd, sname, ident, src)
            os.unlink(sname, dir_fd=sfd)
        except (OSError, ApplianceError):
            # Roll back to "not moved": the source name still holds the file.
            _unlink_if_same(dfd, dname, ident[1])
            raise
        _settle(sfd)

    def _move_file_across(
        self,
        sfd: int,
        sname: str,
        dfd: int,
        dname: str,
        src: Target,
        dest: Target,
        ident: tuple[str, int, int, int],
    ) -> None:
        """Another file system: copy, fsync, link into place, then unlink the source."""
        fd = open_regular(sfd, sname, src.canonical)
        try:
            st = os.fstat(fd)
            mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
            self._materialize(dfd, dname, dest, _chunks(fd), mode, mtime_ns=mtime)
        finally:
            os.close(fd)
        made = lstat_at(dfd, dname)
        try:
            self._check_same(sfd, sname, ident, src)
            os.unlink(sname, dir_fd=sfd)
        except (OSError, ApplianceError):
            if made is not None:
                _unlink_if_same(dfd, dname, made.st_ino)
            raise
        _settle(sfd)

    def _check_same(
        self, dir_fd: int, name: str, ident: tuple[str, int, int, int], target: Target
    ) -> None:
        """Refuse if ``name`` is no longer the exact file that was snapshotted."""
        st = lstat_at(dir_fd, name)
        if st is None or (kind_of(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns) != ident:
            raise ExecutionError(f"{target.canonical} changed during the action; nothing was done")

    # -- deleting -------------------------------------------------------------

    def _delete(self, target: Target, params: dict[str, Any]) -> Outcome:
        if target.is_root:
            raise ScopeError("a share root cannot be deleted")
        with self.shares.open_parent(target) as (fd, name):
            st = lstat_at(fd, name)
            if st is None:
                raise ExecutionError(f"{target.canonical} does not exist")
            refuse_special(st.st_mode, target.canonical)
            tree = self._snapshot(fd, name, target, store=True)
            sid = self.snapshots.save(tree.manifest)
            undo = {"verb": "file.delete", "target": target.canonical, "snapshot_id": sid}
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
                _settle(fd)
        return Outcome(result, sid, undo)

    def _delete_dir(self, fd: int, name: str, target: Target, tree: _Tree) -> str | None:
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
            now = self._snapshot(fd, hidden, target, store=False)
        except BaseException:
            renameat2_noreplace(fd, hidden, fd, name)
            raise
        if now.inventory != tree.inventory:
            renameat2_noreplace(fd, hidden, fd, name)
            raise ExecutionError(
                f"{target.canonical} changed while being deleted; nothing was done"
            )
        try:
            _remove_tree(fd, hidden)
        except OSError:
            # Deleted as far as anyone can see, and saved in the snapshot; the
            # hidden remains are unaddressable and can be removed by hand.
            return hidden
        _settle(fd)
        return None

    # -- snapshots ------------------------------------------------------------

    def _snapshot(self, dir_fd: int, name: str, target: Target, *, store: bool) -> _Tree:
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
                if total[0] > self.snapshot_bytes:
                    raise ExecutionError(
                        f"{target.canonical} is over the {self.snapshot_bytes} byte snapshot "
                        "limit; refusing an action that could not be undone"
                    )
                sha = self.snapshots.put_file_from_fd(fd) if store else _hash_fd(fd)
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
                dirs.append(
                    {"path": rel, "mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns}
                )
                inventory[rel] = ("dir", st.st_ino, 0, 0)
                for child in sorted(os.listdir(fd)):
                    crel = f"{rel}/{child}" if rel else child
                    try:
                        child.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ScopeError(f"{shown} holds a name that is not UTF-8") from None
                    if len(inventory) >= self.snapshot_entries:
                        raise ExecutionError(
                            f"{target.canonical} has over {self.snapshot_entries} entries; "
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
        return _Tree(manifest, inventory, total[0])

    # -- undo -----------------------------------------------------------------

    def _undo_target(self, undo: dict[str, Any], key: str) -> Target:
        value = undo.get(key)
        if not isinstance(value, str):
            raise ExecutionError(f"malformed undo record (no {key})")
        return self.shares.parse(value)

    def _undo_delete(self, undo: dict[str, Any]) -> dict[str, Any]:
        target = self._undo_target(undo, "target")
        sid = undo.get("snapshot_id")
        manifest = self.snapshots.load(sid if isinstance(sid, str) else "")
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
                    _blob_chunks(self.snapshots, entry["sha256"]),
                    entry["mode"],
                    mtime_ns=entry["mtime_ns"],
                    expect_sha=entry["sha256"],
                )
                return
            # A directory is rebuilt under a reserved temporary name and put in
            # place with one no-replace rename: it appears whole or not at all.
            tmp = _tmp_name()
            os.mkdir(tmp, 0o700, dir_fd=fd)
            try:
                self._build_tree(fd, tmp, manifest)
                renameat2_noreplace(fd, tmp, fd, name)
            except BaseException as e:
                # On failure: a reserved-name leftover; the snapshot is untouched.
                with contextlib.suppress(OSError):
                    _remove_tree(fd, tmp)
                if isinstance(e, FileExistsError):
                    raise ExecutionError(
                        f"{target.canonical} is taken now; not restoring over it"
                    ) from None
                raise
            _settle(fd)

    def _build_tree(self, parent_fd: int, top: str, manifest: dict[str, Any]) -> None:
        dirs = sorted(manifest["dirs"], key=lambda d: d["path"].count("/") if d["path"] else -1)
        root_fd = open_subdir(parent_fd, top, top)
        try:
            for d in dirs:
                if d["path"]:
                    _at_rel(root_fd, d["path"], lambda fd, n: os.mkdir(n, 0o700, dir_fd=fd))
            for f in manifest["files"]:

                def put(fd: int, n: str, f: dict[str, Any] = f) -> None:
                    out = os.open(
                        n, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd
                    )
                    try:
                        h = hashlib.sha256()
                        for chunk in _blob_chunks(self.snapshots, f["sha256"]):
                            h.update(chunk)
                            _write_all(out, chunk)
                        if h.hexdigest() != f["sha256"]:
                            raise SnapshotError(f"snapshot blob {f['sha256']} is damaged")
                        os.fchmod(out, f["mode"] & 0o777)
                        os.utime(out, ns=(f["mtime_ns"], f["mtime_ns"]))
                        os.fsync(out)
                    finally:
                        os.close(out)

                _at_rel(root_fd, f["path"], put)
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
                    _at_rel(root_fd, d["path"], fix)
                else:
                    fix(parent_fd, top)
        finally:
            os.close(root_fd)

    def _undo_move(self, undo: dict[str, Any]) -> dict[str, Any]:
        src = self._undo_target(undo, "from")
        dest = self._undo_target(undo, "to")
        sid = undo.get("snapshot_id")
        manifest = self.snapshots.load(sid if isinstance(sid, str) else "")
        if manifest.get("source") != src.canonical:
            raise ExecutionError("undo record and snapshot disagree about the path")
        if src.is_root or dest.is_root or dest.contains(src):
            raise ExecutionError("malformed undo record")
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
            now = self._snapshot(dfd, dname, dest, store=False)
            if _content(now.manifest) != _content(manifest):
                raise ExecutionError(f"{dest.canonical} changed since the move; not moving it back")
            if stat.S_ISDIR(st.st_mode):
                self._rename_dir(dfd, dname, sfd, sname, dest, src)
            else:
                self._move_file(dfd, dname, sfd, sname, dest, src, now.inventory[""])
        return {"moved_back": dest.canonical, "to": src.canonical}

    def _undo_create(self, undo: dict[str, Any]) -> dict[str, Any]:
        target = self._undo_target(undo, "target")
        sha = undo.get("sha256")
        if not isinstance(sha, str):
            raise ExecutionError("malformed undo record (no sha256)")
        with self.shares.open_parent(target) as (fd, name):
            st = lstat_at(fd, name)
            if st is None:
                raise ExecutionError(f"{target.canonical} no longer exists")
            if not stat.S_ISREG(st.st_mode):
                refuse_special(st.st_mode, target.canonical)
                raise ExecutionError(f"{target.canonical} is no longer a file")
            # Saved before removal, so this undo can itself be undone.
            tree = self._snapshot(fd, name, target, store=True)
            if tree.manifest["files"][0]["sha256"] != sha:
                raise ExecutionError(f"{target.canonical} changed since it was created; keeping it")
            sid = self.snapshots.save(tree.manifest)
            self._check_same(fd, name, tree.inventory[""], target)
            os.unlink(name, dir_fd=fd)
            _settle(fd)
        return {"removed": target.canonical, "snapshot_id": sid}

    def _undo_mkdir(self, undo: dict[str, Any]) -> dict[str, Any]:
        created = undo.get("created")
        if not isinstance(created, list) or not created:
            raise ExecutionError("malformed undo record (no created list)")
        if not all(isinstance(c, str) for c in created):
            raise ExecutionError("malformed undo record")
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
                    raise _err(f"cannot remove {t.canonical}", e) from None
                _settle(fd)
            removed.append(t)
        return {"removed": created}


def _content(manifest: dict[str, Any]) -> tuple[Any, ...]:
    """What "the same content" means for undo: file paths and hashes, directory paths."""
    files = sorted((f["path"], f["sha256"]) for f in manifest["files"])
    dirs = sorted(d["path"] for d in manifest["dirs"])
    return manifest["kind"], files, dirs


def _chunks(fd: int) -> Iterator[bytes]:
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


def _blob_chunks(store: SnapshotStore, sha: str) -> Iterator[bytes]:
    with store.open_blob(sha) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    for chunk in _chunks(fd):
        h.update(chunk)
    return h.hexdigest()


def _at_rel(root_fd: int, rel: str, fn: Callable[[int, str], None]) -> None:
    """Call ``fn(dir_fd, name)`` for a relative path inside a tree we are building."""
    parts = rel.split("/")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        fn(fd, parts[-1])
    finally:
        os.close(fd)


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove a directory tree bottom-up through fds, never following a symlink."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        for child in os.listdir(fd):
            st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _settle(dir_fd: int) -> None:
    """fsync a directory after the commit point of an action.

    The change is already visible; a failing fsync cannot take it back, so it
    must not turn a done action into a reported failure (which would leave no
    undo record for a change that happened).
    """
    with contextlib.suppress(OSError):
        fsync_dir(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink_if_same(dir_fd: int, name: str, ino: int) -> None:
    """Roll back a link we made, but never remove a file someone else put there."""
    st = lstat_at(dir_fd, name)
    if st is not None and st.st_ino == ino:
        _unlink_quietly(dir_fd, name)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    # Only ever used on names this module just created.
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
