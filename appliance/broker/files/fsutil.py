"""Low-level file-system steps the file actions share: atomic no-replace
renames, hidden temporary names, removal through fds, and fsync at the point
where an action commits."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import platform
import re
import secrets
import stat
from collections.abc import Callable, Iterator

from appliance.broker.scope import DIR_FLAGS, RESERVED_PREFIX, fsync_dir, lstat_at
from appliance.broker.snapshots import CHUNK
from appliance.errors import ApplianceError, ExecutionError, InsufficientStorage

TMP_PREFIX = RESERVED_PREFIX + "tmp-"
DELETING_PREFIX = RESERVED_PREFIX + "deleting-"
# Exactly the names tmp_name() and _delete_dir() make, and nothing else.
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

    def _renameat2_fn(a: int, b: bytes, c: int, d: bytes, f: int) -> int:
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


def tmp_name() -> str:
    return TMP_PREFIX + secrets.token_hex(8)


def os_error(what: str, e: OSError) -> ApplianceError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        # A full disk is not the action's fault: 507, and the caller has
        # already rolled back (temporary names removed, nothing half-done).
        return InsufficientStorage(f"{what}: the disk is full ({e.strerror}); nothing was changed")
    return ExecutionError(f"{what}: {e.strerror or e}")


FICLONE = 0x40049409  # ioctl: share the source's blocks (Btrfs, XFS, bcachefs)
# Why a clone or an in-kernel copy can be refused, and the next way is tried.
_NOT_HERE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF}
_COPY_STEP = 1 << 30


def copy_content(src: int, dst: int) -> str:
    """Copy every byte of ``src`` into the empty ``dst`` in the kernel: a
    reflink where the file system has them (no data copied at all), else
    ``copy_file_range``, else ``sendfile``; Python never touches the bytes.
    Returns how it was done."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return "reflink"
    except OSError as e:
        if e.errno not in _NOT_HERE | {errno.EPERM}:
            raise
    offset = 0
    way = "copy_file_range"
    with contextlib.suppress(OSError):
        os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # as cp does: read-ahead
    while True:
        try:
            if way == "copy_file_range":
                n = os.copy_file_range(src, dst, _COPY_STEP, offset, offset)
            else:
                n = os.sendfile(dst, src, offset, _COPY_STEP)
        except OSError as e:
            if way != "copy_file_range" or e.errno not in _NOT_HERE:
                raise
            way = "sendfile"  # across file systems on kernels that refuse it
            os.lseek(dst, offset, os.SEEK_SET)
            continue
        if n == 0:
            return way
        offset += n


def chunks(fd: int) -> Iterator[bytes]:
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


def hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    for chunk in chunks(fd):
        h.update(chunk)
    return h.hexdigest()


def at_rel(root_fd: int, rel: str, fn: Callable[[int, str], None]) -> None:
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


def remove_tree(parent_fd: int, name: str) -> None:
    """Remove a directory tree bottom-up through fds, never following a symlink."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        for child in os.listdir(fd):
            st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                remove_tree(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def settle(dir_fd: int) -> None:
    """fsync a directory after the commit point of an action.

    The change is already visible; a failing fsync cannot take it back, so it
    must not turn a done action into a reported failure (which would leave no
    undo record for a change that happened).
    """
    with contextlib.suppress(OSError):
        fsync_dir(dir_fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_if_same(dir_fd: int, name: str, ino: int) -> None:
    """Roll back a link we made, but never remove a file someone else put there."""
    st = lstat_at(dir_fd, name)
    if st is not None and st.st_ino == ino:
        unlink_quietly(dir_fd, name)


def unlink_quietly(dir_fd: int, name: str) -> None:
    # Only ever used on names this module just created.
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
