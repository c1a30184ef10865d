"""Scope resolution: turn ``share:NAME/a/b`` into something safe to act on.

Two layers, on purpose:

* :meth:`Shares.parse` is purely lexical. It refuses anything that is not a
  plain relative path of ordinary names inside a configured share (``..``,
  ``.``, empty components, absolute paths, NUL, control and bidi characters,
  backslashes, over-long names, the broker's reserved ``.appliance-`` prefix)
  and returns a :class:`Target`. It never touches the file system, so the
  policy engine and the approval summary see exactly what will be acted on.
* :meth:`Shares.open_dir` / :meth:`Shares.open_parent` do the file-system
  walk: one ``openat(O_DIRECTORY | O_NOFOLLOW)`` per component starting from
  the share root, so a component that is (or becomes, between check and use) a
  symlink is refused by the kernel instead of followed. Final components are
  handled by the caller with ``*at()`` calls relative to the parent's fd.

Policy on symlinks: every symlink inside a share is refused, including one
that points back inside the share. Deciding "inside" would need the target
resolved, and that resolution is exactly the check-then-use race this module
exists to avoid. See docs/files.md.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.config import Limits
from appliance.errors import ApplianceError, ExecutionError, ScopeError
from appliance.names import (
    PREFIX,
    RESERVED_PREFIX,
    SHARE_NAME,
    Target,
    check_name,
    name_ok,
)

__all__ = [
    "PREFIX",
    "RESERVED_PREFIX",
    "SHARE_NAME",
    "Target",
    "check_name",
    "name_ok",
]

# Directory fds: readable (listdir, fsync need it), never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Regular files for reading: O_NONBLOCK so that a FIFO swapped in between the
# lstat check and the open cannot hang the broker (fstat then refuses it).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ShareConfigError(ApplianceError):
    """The configured shares are unusable (missing root, overlapping shares...)."""

    status = 500
    code = "bad_share_config"


def kind_of(mode: int) -> str:
    """A file type word from an ``st_mode``."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "char-device"
    if stat.S_ISBLK(mode):
        return "block-device"
    return "other"


def refuse_special(mode: int, display: str) -> None:
    """Refuse symlinks, FIFOs, sockets and devices; files and directories pass."""
    kind = kind_of(mode)
    if kind == "symlink":
        raise ScopeError(f"{display} is a symlink; symlinks inside shares are refused")
    if kind not in ("file", "dir"):
        raise ScopeError(f"{display} is a {kind}; only regular files and directories are allowed")


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``fstatat(AT_SYMLINK_NOFOLLOW)``; None when the name does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ExecutionError(f"cannot inspect {name!r}: {e.strerror}") from None


def open_subdir(dir_fd: int, name: str, display: str) -> int:
    """Open ``name`` under ``dir_fd`` as a directory, never through a symlink."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _open_error(e, dir_fd, name, display, want="directory") from None


def open_regular(dir_fd: int, name: str, display: str) -> int:
    """Open ``name`` under ``dir_fd`` for reading; it must be a regular file.

    The type is checked with lstat first (so a device is never opened, which
    can have side effects) and again with fstat on the opened fd (so a swap in
    between is caught on the object actually opened).
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        raise ExecutionError(f"{display} does not exist")
    if stat.S_ISDIR(st.st_mode):
        raise ExecutionError(f"{display} is a directory, not a file")
    refuse_special(st.st_mode, display)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _open_error(e, dir_fd, name, display, want="file") from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            refuse_special(fst.st_mode, display)
            raise ExecutionError(f"{display} is a directory, not a file")
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise ExecutionError(f"{display} changed while it was being opened")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_error(e: OSError, dir_fd: int, name: str, display: str, want: str) -> ApplianceError:
    if e.errno == errno.ELOOP:
        return ScopeError(f"{display} is a symlink; symlinks inside shares are refused")
    if e.errno == errno.ENOENT:
        return ExecutionError(f"{display} does not exist")
    if e.errno == errno.ENOTDIR:
        st = lstat_at(dir_fd, name)
        if st is not None:
            refuse_special(st.st_mode, display)
        return ExecutionError(f"{display} is not a {want}")
    if e.errno in (errno.ENXIO, errno.EOPNOTSUPP):
        return ScopeError(f"{display} is not a regular file")
    return ExecutionError(f"cannot open {display}: {e.strerror}")


def fsync_dir(fd: int) -> None:
    """Make a directory's entries (links, unlinks, renames) durable."""
    os.fsync(fd)


class Shares:
    """The configured shares and race-safe access to what is inside them."""

    def __init__(self, roots: dict[str, Path], limits: Limits):
        self.limits = limits
        self._roots: dict[str, Path] = {}
        for name, path in roots.items():
            if not SHARE_NAME.fullmatch(name):
                raise ShareConfigError(
                    f"share name {name!r} must be 1-64 letters, digits, '-' or '_'"
                )
            p = Path(path)
            if not p.is_absolute():
                raise ShareConfigError(f"share {name}: root {str(p)!r} must be an absolute path")
            # Resolved once, here: a root given through a symlink is pinned to
            # what the symlink points at now. Later walks open this real path
            # with O_NOFOLLOW on its last component.
            try:
                real = p.resolve(strict=True)
            except (OSError, RuntimeError):
                raise ShareConfigError(f"share {name}: root {str(p)!r} does not exist") from None
            if not real.is_dir():
                raise ShareConfigError(f"share {name}: root {str(real)!r} is not a directory")
            self._roots[name] = real
        # Overlapping shares would give one file two names, and a policy that
        # treats the shares differently could be bypassed through the other.
        items = sorted(self._roots.items())
        for i, (a, pa) in enumerate(items):
            for b, pb in items[i + 1 :]:
                if pa == pb or pa in pb.parents or pb in pa.parents:
                    raise ShareConfigError(f"shares {a} and {b} overlap ({pa}, {pb})")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._roots))

    def root(self, share: str) -> Path:
        """The real path of a share's root directory."""
        return self._roots[share]

    def parse(self, resource: object) -> Target:
        """Lexically check ``share:NAME[/a/b...]`` and return its :class:`Target`.

        The share root may be written ``share:NAME`` or ``share:NAME/``; its
        canonical form is ``share:NAME/``. Nothing is normalised: ``.``,
        ``..``, empty components and trailing slashes are refused, so one
        location has exactly one spelling.
        """
        if not isinstance(resource, str):
            raise ScopeError("a resource must be a string")
        if "\x00" in resource:
            raise ScopeError("NUL byte in path")
        try:
            size = len(resource.encode("utf-8"))
        except UnicodeEncodeError:
            raise ScopeError("resource is not valid UTF-8") from None
        if size > self.limits.path_bytes:
            raise ScopeError(f"resource of {size} bytes is over the {self.limits.path_bytes} limit")
        if not resource.startswith(PREFIX):
            raise ScopeError(f"a resource must start with {PREFIX!r} (share:NAME/path)")
        share, _, path = resource[len(PREFIX) :].partition("/")
        if not share:
            raise ScopeError("resource names no share")
        if share not in self._roots:
            shown = share if len(share) <= 64 and share.isprintable() else share[:64] + "..."
            raise ScopeError(f"unknown share {shown!r}")
        if path == "":
            return Target(share, ())
        if path.startswith("/"):
            raise ScopeError("absolute paths are not allowed; paths are relative to the share")
        parts = tuple(path.split("/"))
        for part in parts:
            check_name(part, self.limits)
        return Target(share, parts)

    def _open_root(self, share: str) -> int:
        if share not in self._roots:
            raise ScopeError(f"unknown share {share!r}")
        try:
            return os.open(self._roots[share], DIR_FLAGS)
        except OSError as e:
            raise ExecutionError(f"share {share} is unavailable: {e.strerror}") from None

    def _walk(self, share: str, parts: tuple[str, ...]) -> int:
        fd = self._open_root(share)
        try:
            for i, part in enumerate(parts):
                display = Target(share, parts[: i + 1]).canonical
                nfd = open_subdir(fd, part, display)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def open_dir(self, target: Target) -> Iterator[int]:
        """A directory fd for ``target`` itself (the share root allowed)."""
        fd = self._walk(target.share, target.parts)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def open_parent(self, target: Target) -> Iterator[tuple[int, str]]:
        """``(parent_dir_fd, final_name)``: act on the final name with ``*at()`` calls."""
        if target.is_root:
            raise ScopeError(f"{target.canonical} is a share root; this needs a path inside it")
        fd = self._walk(target.share, target.parts[:-1])
        try:
            yield fd, target.parts[-1]
        finally:
            os.close(fd)

    def inspect(self, target: Target) -> str | None:
        """What ``target`` is now, for deciding: "file", "dir", or None if it (or a
        parent) does not exist yet (a plan may create it first).

        Walks from the share root with ``O_NOFOLLOW`` like every action does, and
        refuses a symlink or special file anywhere on the existing part of the
        path. The executor checks again when it acts: this is not the gate.
        """
        st = self.lookup(target)
        return None if st is None else kind_of(st.st_mode)

    def lookup(self, target: Target) -> os.stat_result | None:
        """``target``'s status now (see :meth:`inspect`), or None."""
        fd = self._open_root(target.share)
        try:
            if not target.parts:
                return os.fstat(fd)
            for i, part in enumerate(target.parts):
                display = Target(target.share, target.parts[: i + 1]).canonical
                st = lstat_at(fd, part)
                if st is None:
                    return None
                refuse_special(st.st_mode, display)
                if i == len(target.parts) - 1:
                    return st
                if not stat.S_ISDIR(st.st_mode):
                    return None  # a file where a directory should be: the action will fail
                nfd = open_subdir(fd, part, display)
                os.close(fd)
                fd = nfd
            return None  # unreachable: the loop returns at the last part
        finally:
            os.close(fd)
