"""The audit log's open files: the segment being appended to, and the
sealed ones read back when an old entry or a proof asks for them.

Only :class:`~appliance.audit.log.AuditLog` uses this, from its leader
(one batch at a time): appends, fsyncs, cutting a batch back, sealing a
full segment into the index, and counting fsyncs for the benchmarks.
"""

from __future__ import annotations

import errno
import logging
import os
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .merkle import MerkleTree, SegmentChanged, leaf_hash
from .segments import (
    INDEX_FILE,
    checkpoints_name,
    entries_name,
    fsync_dir,
    read_bytes,
    seal_line,
    split_lines,
)

log = logging.getLogger("appliance.audit")

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """A write found the disk full; the batch was cut back (nothing of it stays)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class SegmentFiles:
    def __init__(self, directory: Path, size: int, sealed: int) -> None:
        self.directory = directory
        self.size = size  # entries a segment
        self.sealed = sealed  # segments with an index line
        self.active = -1
        self.efd = self.cfd = -1
        self.offsets = array("Q", [0])  # byte offset of each entry of the active segment
        self.fsyncs = 0
        self._cached: tuple[int, list[bytes]] | None = None

    @property
    def first(self) -> int:
        """The index of the active segment's first entry."""
        return self.active * self.size

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.fsyncs += 1

    def open(self, segment: int, lines: list[bytes] | None = None) -> None:
        """Append to ``segment`` from now on (its files made if new);
        ``lines``: the entries it already holds."""
        self.close()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        made = not (self.directory / entries_name(segment)).exists()
        self.efd = os.open(self.directory / entries_name(segment), flags, 0o600)
        try:
            self.cfd = os.open(self.directory / checkpoints_name(segment), flags, 0o600)
        except BaseException:
            os.close(self.efd)
            self.efd = -1
            raise
        self.active = segment
        self.offsets = array("Q", [0])
        for line in lines or []:
            self.offsets.append(self.offsets[-1] + len(line) + 1)
        if made:
            fsync_dir(self.directory)

    def close(self) -> None:
        for fd in (self.efd, self.cfd):
            if fd >= 0:
                os.close(fd)
        self.efd = self.cfd = -1

    def write_batch(
        self,
        batch: list[bytes],
        checkpoint: bytes,
        on_full: Callable[[], bool] | None,
    ) -> None:
        """Entries, fsync, checkpoint, fsync. A full disk at a write is cut
        back to where the batch began and, once ``on_full`` freed room, tried
        again; still full: :class:`DiskFull`. Any other failure is raised as
        it is (the caller cuts back and fails closed)."""
        e_end, c_end = self.offsets[-1], os.fstat(self.cfd).st_size
        for attempt in (1, 2):
            try:
                write_all(self.efd, b"\n".join(batch) + b"\n")
                self.fsync(self.efd)
                write_all(self.cfd, checkpoint + b"\n")
            except OSError as e:
                if e.errno not in NO_SPACE:
                    raise
                self.cut_back(e_end, c_end)
                if attempt == 1 and on_full is not None and on_full():
                    continue
                raise DiskFull(
                    f"the audit log cannot write: the disk is full ({e.strerror})"
                ) from None
            self.fsync(self.cfd)
            break
        for line in batch:
            self.offsets.append(self.offsets[-1] + len(line) + 1)

    def ends(self) -> tuple[int, int]:
        """Where the active files end now (to cut a failed batch back to)."""
        return self.offsets[-1], os.fstat(self.cfd).st_size

    def cut_back(self, e_end: int, c_end: int) -> None:
        """Both files back to these lengths, durably (truncating frees
        blocks, so this works on a full disk too)."""
        os.ftruncate(self.efd, e_end)
        os.ftruncate(self.cfd, c_end)
        self.fsync(self.efd)
        self.fsync(self.cfd)

    def seal(self, tree: MerkleTree, segment: int, sessions_of: Callable[..., Any]) -> None:
        """Write a full segment's index line and prune it from the tree. The
        index is derived: a failure here is logged, and the line is rebuilt
        at the next start."""
        try:
            if segment != self.sealed:
                raise ValueError(f"segment {self.sealed} has no index line yet")
            lines = self.lines(segment, fresh=True)
            line = seal_line(
                self.directory, segment, self.size, lines, sessions_of(lines, segment * self.size)
            )
            if line.root != tree.segment_root(segment):
                raise SegmentChanged(f"segment {segment} changed on disk before it was sealed")
            fd = os.open(self.directory / INDEX_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                write_all(fd, line.to_line() + b"\n")
                self.fsync(fd)
            finally:
                os.close(fd)
            self.sealed += 1
        except (OSError, ValueError) as e:
            log.error("audit log %s: could not seal segment %d: %r", self.directory, segment, e)
        tree.prune()

    def lines(self, segment: int, *, fresh: bool = False) -> list[bytes]:
        """A segment's entry lines, read back (the last one read is kept)."""
        if not fresh and self._cached is not None and self._cached[0] == segment:
            return self._cached[1]
        lines, _ = split_lines(read_bytes(self.directory / entries_name(segment)))
        self._cached = (segment, lines)
        return lines

    def leaves(self, segment: int) -> list[bytes]:
        """A sealed segment's leaf hashes (the tree checks them against its root)."""
        return [leaf_hash(line) for line in self.lines(segment)]

    def read_active(self, lo: int, hi: int) -> list[bytes]:
        """Entries ``lo`` .. ``hi - 1`` of the active segment (relative indices)."""
        start, end = self.offsets[lo], self.offsets[hi]
        return os.pread(self.efd, end - start, start).split(b"\n")[:-1]
