"""The audit log on disk, in segments.

The log is one RFC 9162 Merkle tree over all entries, stored in segments of
``S`` entries (a power of two, 16384 by default), two files each:

    entries-00000000.jsonl       entries 0 .. S-1, one canonical JSON line each
    checkpoints-00000000.jsonl   the checkpoints whose tree size falls in it
    entries-00000001.jsonl       entries S .. 2S-1
    ...
    segments.jsonl               one line per sealed (full) segment

A checkpoint of tree size ``t`` lives in segment ``(t - 1) // S`` (size 0 in
segment 0); a batch never crosses a segment's end, so every full segment
ends with a checkpoint over exactly its last entry. Since ``S`` is a power
of two, a full segment is a complete subtree of the log's tree: its root,
with the hashes of both files, its newest checkpoint and the session keys
vouched for inside it, is its line in ``segments.jsonl``. That index is
derived data: the broker rebuilds the tree from it at start instead of
re-reading every entry ever written, and anything it says is checked
against a signed checkpoint (a wrong root changes every later root); a
missing line is rebuilt from the segment's files.

Logs written before segments have ``entries.jsonl`` and ``checkpoints.jsonl``:
they are verified, copied into segments byte for byte, and only then
removed (``migrate_legacy``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.intents import canonical_json

from .merkle import MerkleTree, leaf_hash

SEGMENT_ENTRIES = 1 << 14
INDEX_FILE = "segments.jsonl"
LEGACY_ENTRIES = "entries.jsonl"
LEGACY_CHECKPOINTS = "checkpoints.jsonl"
_NAME = re.compile(r"(?:entries|checkpoints)-(\d{8})\.jsonl\Z")


def entries_name(segment: int) -> str:
    return f"entries-{segment:08d}.jsonl"


def checkpoints_name(segment: int) -> str:
    return f"checkpoints-{segment:08d}.jsonl"


def segment_of(tree_size: int, size: int) -> int:
    """The segment a checkpoint of ``tree_size`` belongs in."""
    return 0 if tree_size == 0 else (tree_size - 1) // size


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their newline) and the torn bytes after the last one.

    Only ``\\n`` ends a line: canonical JSON escapes it inside strings, while
    other Unicode line breaks (U+2028...) may appear raw and must not split.
    """
    cut = data.rfind(b"\n") + 1
    body, torn = data[:cut], data[cut:]
    return (body.split(b"\n")[:-1] if body else []), torn


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def list_segments(directory: Path) -> list[int]:
    """The segment numbers that have a file in ``directory``."""
    found = {int(m.group(1)) for p in directory.iterdir() if (m := _NAME.match(p.name))}
    return sorted(found)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Sealed:
    """A sealed segment's line in the index."""

    segment: int
    size: int  # the tree size at its end: (segment + 1) * S
    root: bytes  # the root of its own S leaves (a complete subtree of the log)
    entries_sha256: str
    checkpoints_sha256: str
    last_checkpoint: dict[str, Any]
    sessions: list[list[Any]]  # [index, data] of the audit.session entries in it

    def to_line(self) -> bytes:
        return canonical_json(
            {
                "segment": self.segment,
                "size": self.size,
                "root_hash": self.root.hex(),
                "entries_sha256": self.entries_sha256,
                "checkpoints_sha256": self.checkpoints_sha256,
                "last_checkpoint": self.last_checkpoint,
                "sessions": self.sessions,
            }
        )


def read_index(directory: Path) -> tuple[list[Sealed], int]:
    """The index's lines that are well formed and in order (the rest is
    rebuilt from the segments' files), and the byte length they take."""
    lines, _ = split_lines(read_bytes(directory / INDEX_FILE))
    out: list[Sealed] = []
    used = 0
    for n, line in enumerate(lines):
        try:
            raw = json.loads(line)
            sealed = Sealed(
                segment=raw["segment"],
                size=raw["size"],
                root=bytes.fromhex(raw["root_hash"]),
                entries_sha256=str(raw["entries_sha256"]),
                checkpoints_sha256=str(raw["checkpoints_sha256"]),
                last_checkpoint=dict(raw["last_checkpoint"]),
                sessions=list(raw["sessions"]),
            )
        except (ValueError, KeyError, TypeError):
            break
        size = out[0].size if out else sealed.size
        if (
            sealed.segment != n
            or not isinstance(size, int)
            or size < 2
            or size & (size - 1)
            or sealed.size != (n + 1) * size
            or len(sealed.root) != 32
        ):
            break
        out.append(sealed)
        used += len(line) + 1
    return out, used


def write_durably(path: Path, data: bytes) -> None:
    """A whole file, complete or absent: temporary name, fsync, rename, fsync
    of the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_line(
    directory: Path, segment: int, size: int, lines: list[bytes], sessions: list[list[Any]]
) -> Sealed:
    """The index line of a full segment, from its files (which it checks
    end with a checkpoint over the segment's last entry, or names none)."""
    cps, _ = split_lines(read_bytes(directory / checkpoints_name(segment)))
    last = json.loads(cps[-1]) if cps else {}
    return Sealed(
        segment=segment,
        size=(segment + 1) * size,
        root=MerkleTree(leaf_hash(line) for line in lines).root(),
        entries_sha256=file_sha256(directory / entries_name(segment)),
        checkpoints_sha256=file_sha256(directory / checkpoints_name(segment)),
        last_checkpoint=last if isinstance(last, dict) else {},
        sessions=sessions,
    )


def partial_migration_differs(directory: Path, size: int) -> str | None:
    """Segment files beside a log of the earlier layout may only be what an
    interrupted migration of that very log wrote; anything else is two
    different logs, and neither is touched."""
    elines, _ = split_lines(read_bytes(directory / LEGACY_ENTRIES))
    for seg in list_segments(directory):
        have = read_bytes(directory / entries_name(seg))
        part = elines[seg * size : (seg + 1) * size]
        if have and not b"".join(x + b"\n" for x in part).startswith(have.rpartition(b"\n")[0]):
            return (
                f"{LEGACY_ENTRIES} and {entries_name(seg)} hold different entries: an old-layout "
                "log beside a segmented one; both are left as found"
            )
    return None


def migrate_legacy(
    directory: Path, size: int, sessions_of: Callable[[list[bytes], int], list[list[Any]]]
) -> None:
    """Copy a verified log of the earlier layout into segments, then remove
    the old files (entries first: while ``entries.jsonl`` exists, it is the
    log; once it is gone, the segments are, and a leftover
    ``checkpoints.jsonl`` is only removed)."""
    elines, etorn = split_lines(read_bytes(directory / LEGACY_ENTRIES))
    clines, ctorn = split_lines(read_bytes(directory / LEGACY_CHECKPOINTS))
    count = max(1, -(-len(elines) // size))
    cps: list[list[bytes]] = [[] for _ in range(count)]
    for line in clines:
        cp = json.loads(line)
        cps[min(segment_of(cp["tree_size"], size), count - 1)].append(line)
    index = b""
    for seg in range(count):
        part = elines[seg * size : (seg + 1) * size]
        last = seg == count - 1
        body = b"".join(x + b"\n" for x in part) + (etorn if last else b"")
        write_durably(directory / entries_name(seg), body)
        cbody = b"".join(x + b"\n" for x in cps[seg]) + (ctorn if last else b"")
        write_durably(directory / checkpoints_name(seg), cbody)
        if len(part) == size:
            index += seal_line(directory, seg, size, part, sessions_of(part, seg * size)).to_line()
            index += b"\n"
    write_durably(directory / INDEX_FILE, index)
    (directory / LEGACY_ENTRIES).unlink()
    fsync_dir(directory)
    (directory / LEGACY_CHECKPOINTS).unlink(missing_ok=True)
    fsync_dir(directory)
