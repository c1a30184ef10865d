"""Opening an audit log: verify first, in time that does not grow with the log.

The sealed segments count by their lines in the index (their roots); only
the segments after them are read, hashed and checked: every entry's form
and index, every checkpoint's form, key and order, and the newest
checkpoint's signature and root, which commits to every entry before it,
sealed ones included (a wrong root in the index changes that root). If
anything is wrong, the full check (every entry, every signature) runs to
say where, and the log is refused (:class:`AuditTampered`), left as found.

A log of the earlier layout (one pair of files) is checked whole, then
copied into segments (segments.py) before it is opened.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import SESSION_KIND, AuditTampered, Keys, signature_ok
from .merkle import MerkleTree, leaf_hash, root_from_peaks
from .reading import segment_size, verify_log
from .segments import (
    LEGACY_CHECKPOINTS,
    LEGACY_ENTRIES,
    Sealed,
    checkpoints_name,
    entries_name,
    list_segments,
    migrate_legacy,
    partial_migration_differs,
    read_bytes,
    read_index,
    split_lines,
)
from .verify import Checker


@dataclass
class Opened:
    """What the writer continues from."""

    size: int  # entries a segment
    tree: MerkleTree
    active: int  # the newest segment (its files may be full, or absent for a new log)
    lines: list[bytes]  # its entries
    torn: bytes  # bytes after its entries' last newline
    cp_bytes: int  # its checkpoints file's length without a torn tail
    cp_torn: bytes
    latest: dict[str, Any] | None  # the newest checkpoint
    last_signed: int  # the tree size the newest checkpoint covers
    index: list[Sealed]
    index_bytes: int  # the index file's length that holds good lines
    # Full segments the index has no line for yet.
    to_seal: list[int] = field(default_factory=list)
    created: bool = False


def sessions_of(lines: Sequence[bytes], first: int) -> list[list[Any]]:
    """[index, data] of the audit.session entries among ``lines``."""
    out: list[list[Any]] = []
    for pos, line in enumerate(lines, start=first):
        if SESSION_KIND.encode() in line:
            entry = json.loads(line)
            if entry.get("kind") == SESSION_KIND:
                out.append([pos, entry["data"]])
    return out


def _refuse(directory: Path, pem: bytes) -> AuditTampered:
    report = verify_log(directory, pem)
    problems = report.problems or ["its newest checkpoint does not verify"]
    shown = " ".join(problems[:3])
    more = len(problems) - 3
    return AuditTampered(
        f"The audit log in {directory} does not verify: {shown}"
        + (f" (and {more} more problems)" if more > 0 else "")
    )


def open_segments(
    directory: Path, pem: bytes, default_size: int, loader: Callable[[int], Sequence[bytes]]
) -> Opened:
    if (directory / LEGACY_ENTRIES).exists():
        differs = partial_migration_differs(directory, default_size)
        if differs:
            raise AuditTampered(f"The audit log in {directory} is ambiguous: {differs}")
        if not verify_log(directory, pem).ok:
            raise _refuse(directory, pem)
        migrate_legacy(directory, default_size, sessions_of)
    segments = list_segments(directory)
    if (directory / LEGACY_CHECKPOINTS).exists() and segments:
        (directory / LEGACY_CHECKPOINTS).unlink()  # a migration's last step, interrupted
    if not segments:
        if (directory / LEGACY_CHECKPOINTS).exists():
            raise _refuse(directory, pem)  # checkpoints without their entries
        tree = MerkleTree.from_segments(default_size, [], loader)
        return Opened(default_size, tree, 0, [], b"", 0, b"", None, 0, [], 0, created=True)
    index, index_bytes = read_index(directory)
    size = segment_size(directory, segments, index) or default_size
    if segments != list(range(len(segments))) or len(index) > len(segments):
        raise _refuse(directory, pem)
    keys = Keys(pem)
    checker = Checker(pem, all_signatures=False, start=len(index) * size, keys=keys)
    for sealed in index:
        checker.add_peak(size, sealed.root)
        for pos, data in sealed.sessions:
            keys.add_session(data, pos)
        checker.boot_high = max(checker.boot_high, int(sealed.last_checkpoint.get("boot_count", 0)))
    # The segments after the sealed ones: read whole (checkpoints first).
    read: list[tuple[int, list[bytes], list[bytes], bytes, bytes]] = []
    for seg in segments[len(index) :]:
        clines, ctorn = split_lines(read_bytes(directory / checkpoints_name(seg)))
        elines, etorn = split_lines(read_bytes(directory / entries_name(seg)))
        if seg != segments[-1] and (len(elines) != size or etorn or ctorn):
            raise _refuse(directory, pem)
        read.append((seg, elines, clines, etorn, ctorn))
    newest = next(((checkpoints_name(s), len(c)) for s, _, c, _, _ in reversed(read) if c), None)
    checker.newest = newest
    for seg, elines, clines, _, _ in read:
        full = len(elines) == size
        checker.segment(
            seg * size,
            elines,
            clines,
            efile=entries_name(seg),
            cfile=checkpoints_name(seg),
            full=full,
            last=seg == segments[-1],
        )
    problems = checker.finish(has_checkpoints=newest is not None or bool(index))
    latest: dict[str, Any] | None = checker.top.cp if checker.top is not None else None
    if newest is None and index:
        # The newest checkpoint closed the last sealed segment: check it here.
        latest = index[-1].last_checkpoint
        key = keys.for_checkpoint(latest) if latest.get("key_id") else None
        if (
            key is None
            or not signature_ok(key, latest)
            or latest.get("tree_size") != len(index) * size
            or root_from_peaks([h for _, h in checker.peaks]).hex() != latest.get("root_hash")
        ):
            problems.append("the newest checkpoint does not verify")
    if problems:
        raise _refuse(directory, pem)
    tree = MerkleTree.from_segments(size, [s.root for s in index], loader)
    for _, elines, _, _, _ in read:
        for line in elines:
            tree.append_hash(leaf_hash(line))
    # Every segment sealed: the next one is made by the next batch.
    seg, elines, clines, etorn, ctorn = read[-1] if read else (len(index), [], [], b"", b"")
    return Opened(
        size=size,
        tree=tree,
        active=seg,
        lines=elines,
        torn=etorn,
        cp_bytes=sum(len(c) + 1 for c in clines),
        cp_torn=ctorn,
        latest=latest,
        last_signed=checker.last_signed_size,
        index=index,
        index_bytes=index_bytes,
        to_seal=[s for s, e, _, _, _ in read if len(e) == size],
    )
