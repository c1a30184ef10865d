"""The per-share trash: a hidden folder at the share root, owned by the broker.

A delete renames what it deletes into ``<share>/.appliance-trash/<16 hex>``:
one ``renameat2`` on the same file system, whatever the size (the
freedesktop.org trash does the same). What the item was and where it came
from is recorded in the broker's state (the undo record and the retention
index), never in the share: share users can write into the share, so nothing
the broker trusts is read from there.

Scope resolution refuses every name starting with ``.appliance-``, so no
intent can address the trash or anything in it. The folder is made with mode
0700; one that is a symlink, not a folder, or not the broker's own with that
mode (a share user made it first) is refused, and the delete with it: the
broker never puts a file where someone else can take it out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from appliance.broker.files.fsutil import MAX_DEPTH
from appliance.broker.scope import DIR_FLAGS, RESERVED_PREFIX, Shares, Target, fsync_dir
from appliance.errors import ExecutionError, ScopeError

TRASH_DIR = RESERVED_PREFIX + "trash"


def item_name() -> str:
    return secrets.token_hex(8)


@contextmanager
def open_trash(shares: Shares, share: str, *, create: bool) -> Iterator[int | None]:
    """The fd of ``share``'s trash folder (made when ``create``; else None if
    there is none yet)."""
    with shares.open_dir(Target(share, ())) as root:
        fd = _open(root, share)
        if fd is None and create:
            # Made in between by someone else: it is checked below like any other.
            with contextlib.suppress(FileExistsError):
                os.mkdir(TRASH_DIR, 0o700, dir_fd=root)
            fsync_dir(root)
            fd = _open(root, share)
        if fd is None:
            yield None
            return
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
                raise ExecutionError(
                    f"the trash folder of share {share} ({TRASH_DIR}) is not the broker's own "
                    f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); refusing to "
                    "put anything there. Remove it; the broker makes its own (mode 700)."
                )
            yield fd
        finally:
            os.close(fd)


def _open(root: int, share: str) -> int | None:
    try:
        return os.open(TRASH_DIR, DIR_FLAGS, dir_fd=root)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ScopeError(
                f"the trash folder of share {share} ({TRASH_DIR}) is not a folder (a symlink "
                "or a file put there); refusing to use it"
            ) from None
        raise


def measure(dir_fd: int, name: str) -> tuple[int, int]:
    """(bytes, files) of a file or a whole tree, by ``lstat`` through fds,
    never following a symlink: what a trashed item holds, for the budget."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, 1
    total = files = 0

    def walk(parent: int, dname: str, depth: int) -> None:
        nonlocal total, files
        if depth > MAX_DEPTH:
            raise ExecutionError(f"nested deeper than {MAX_DEPTH} folders")
        fd = os.open(dname, DIR_FLAGS, dir_fd=parent)
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        walk(fd, entry.name, depth + 1)
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
                        files += 1
        finally:
            os.close(fd)

    walk(dir_fd, name, 0)
    return total, files
