"""What a moved or trashed thing *is*, so an undo can tell it from something
else that now stands in its place.

An undo by inverse (move it back, take it out of the trash) copies nothing,
so it must be sure it moves the very file or folder the action moved, not
one a share writer put there since. The identity is the inode number and the
inode's birth time (``statx`` ``STATX_BTIME``: set by the kernel when the
inode is made, never settable by a user, so a new file that happens to get
the old inode number back still differs), and for a file its size and
modification time (a file edited in place since is refused too, as the
content comparison did before). Where a file system keeps no birth time
(``btime_ns`` 0), the inode number, size and time are what is left.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

from appliance.errors import ExecutionError

_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BASIC = 0x7FF
_STATX_BTIME = 0x800
_libc = ctypes.CDLL(None, use_errno=True)
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]


@dataclass(frozen=True)
class Identity:
    kind: str  # "file" or "dir"
    ino: int
    btime_ns: int  # 0: the file system keeps no birth time
    size: int = 0  # files only
    mtime_ns: int = 0  # files only

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ino": self.ino,
            "btime_ns": self.btime_ns,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }

    @classmethod
    def from_json(cls, raw: object) -> Identity:
        if not isinstance(raw, dict) or raw.get("kind") not in ("file", "dir"):
            raise ExecutionError("malformed undo record (identity)")
        values = [raw.get(k) for k in ("ino", "btime_ns", "size", "mtime_ns")]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ExecutionError("malformed undo record (identity)")
        ino, btime, size, mtime = (int(v) for v in values)  # type: ignore[arg-type]
        return cls(str(raw["kind"]), ino, btime, size, mtime)

    def same(self, now: Identity | None) -> bool:
        """``now`` is this very file or folder, unchanged (a file's size and
        time included; a folder's content may have changed)."""
        if now is None or (now.kind, now.ino) != (self.kind, self.ino):
            return False
        if self.btime_ns and now.btime_ns and self.btime_ns != now.btime_ns:
            return False
        return self.kind == "dir" or (self.size, self.mtime_ns) == (now.size, now.mtime_ns)


def identity_at(dir_fd: int, name: str) -> Identity | None:
    """The identity of ``name`` under ``dir_fd`` (never through a symlink);
    None when it does not exist. Raises for anything but a file or folder."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ExecutionError(f"{name!r} is neither a file nor a folder")
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
    btime = _btime(dir_fd, name, st.st_ino)
    if kind == "dir":
        return Identity(kind, st.st_ino, btime)
    return Identity(kind, st.st_ino, btime, st.st_size, st.st_mtime_ns)


def _btime(dir_fd: int, name: str, ino: int) -> int:
    """Birth time in ns from statx, 0 when unknown (or the name changed under us)."""
    if _statx is None:
        return 0
    buf = ctypes.create_string_buffer(256)
    if _statx(dir_fd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW, _STATX_BASIC | _STATX_BTIME, buf):
        return 0
    mask = struct.unpack_from("I", buf, 0)[0]
    (got_ino,) = struct.unpack_from("Q", buf, 32)
    if not mask & _STATX_BTIME or got_ino != ino:
        return 0
    sec, nsec = struct.unpack_from("qI", buf, 80)
    return sec * 1_000_000_000 + nsec
