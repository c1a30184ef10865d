"""``verify_log``: read an audit log directory (segments, or the earlier
single pair of files) and hand it to the :class:`~appliance.audit.verify.Checker`.

Beside a running broker the newest segment grows while it is read, so each
segment's checkpoints are read before its entries: entries only ever grow
after a checkpoint was read, never the other way round (which would look
like a truncation).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .checkpoints import Keys, parse_checkpoint
from .merkle import MerkleTree, leaf_hash
from .segments import (
    INDEX_FILE,
    LEGACY_CHECKPOINTS,
    LEGACY_ENTRIES,
    Sealed,
    checkpoints_name,
    entries_name,
    list_segments,
    read_bytes,
    read_index,
    split_lines,
)
from .verify import Checker, VerifyReport, sealed_problem


def _read(path: Path) -> bytes:
    return read_bytes(path)


def verify_log(
    directory: Path,
    public_key_pem: bytes,
    *,
    trusted_checkpoint: dict[str, Any] | None = None,
    since: dict[str, Any] | None = None,
) -> VerifyReport:
    """Check the audit log in ``directory`` with the device's public key alone.

    ``trusted_checkpoint``: a checkpoint saved earlier outside the box; the
    log must extend it (everything is read). ``since``: the same, and only
    what came after it is read again, from the start of its segment (the
    sealed segments before count by their roots in the index, which the
    saved checkpoint's signed root must agree with). Save ``report.newest``
    for the next check. Reads the files and writes nothing, so it is safe on
    a copy, on a card taken out of the box, or beside a running broker (an
    append in flight shows up as a warning, not a problem).
    """
    directory = Path(directory)
    segments = list_segments(directory) if directory.is_dir() else []
    if (directory / LEGACY_ENTRIES).exists() or (
        not segments and (directory / LEGACY_CHECKPOINTS).exists()
    ):
        return _one_pair(directory, public_key_pem, since or trusted_checkpoint)
    index, _ = read_index(directory)
    size = segment_size(directory, segments, index)
    problems: list[str] = []
    if segments != list(range(len(segments))):
        missing = sorted(set(range(max(segments) + 1)) - set(segments))
        problems.append(f"The files of segment(s) {missing} are missing: they were removed.")
    first_segment, checker = 0, None
    if since is not None:
        first_segment, checker, why = _from_checkpoint(
            directory, public_key_pem, since, segments, index, size
        )
        problems += why
    if checker is None:
        checker = Checker(public_key_pem, trusted=trusted_checkpoint)
    warnings: list[str] = []
    checkpoints = 0
    last = segments[-1] if segments else 0
    for seg in segments[first_segment:]:
        cname, ename = checkpoints_name(seg), entries_name(seg)
        cdata = _read(directory / cname)
        edata = _read(directory / ename)
        clines, ctorn = split_lines(cdata)
        elines, etorn = split_lines(edata)
        checkpoints += len(clines)
        is_last = seg == last
        if not is_last and (len(elines) != size or etorn or ctorn):
            problems.append(
                f"Segment {seg} is not the newest but holds {len(elines)} entries"
                f"{' and a torn line' if etorn or ctorn else ''}, not {size}: it was cut or "
                "added to."
            )
        full = size is not None and len(elines) == size and not is_last
        local = checker.segment(
            seg * (size or 0), elines, clines, efile=ename, cfile=cname, full=full, last=is_last
        )
        if seg < len(index):
            problems += _check_sealed(index[seg], local, edata, cdata)
        if is_last:
            warnings += _torn(ename, etorn, cname, ctorn, len(elines))
    for line in index[len(segments) :]:
        problems.append(sealed_problem(line.segment, INDEX_FILE, "its files are missing"))
    has_checkpoints = checkpoints > 0 or first_segment > 0
    problems = problems + checker.finish(has_checkpoints=has_checkpoints)
    return VerifyReport(
        ok=not problems,
        entries=checker.n,
        checkpoints=checkpoints,
        problems=problems,
        unsafe_signer=checker.unsafe,
        warnings=checker.warnings() + warnings,
        read_from=first_segment * (size or 0),
        newest=checker.top.cp if checker.top is not None and not problems else None,
    )


def segment_size(directory: Path, segments: list[int], index: list[Sealed]) -> int | None:
    """The log's segment size: from the index, else from a full first
    segment; None while the log has one segment only."""
    if index:
        return index[0].size
    if len(segments) > 1:
        return len(split_lines(read_bytes(directory / entries_name(0)))[0])
    return None


def _from_checkpoint(
    directory: Path,
    pem: bytes,
    since: dict[str, Any],
    segments: list[int],
    index: list[Sealed],
    size: int | None,
) -> tuple[int, Checker | None, list[str]]:
    """Where a check from a saved checkpoint starts, and the checker carrying
    what the sealed segments before it hold (their roots and session keys)."""
    cp, why = parse_checkpoint(since)
    if cp is None:
        return 0, None, [f"The saved checkpoint {why}."]
    if size is None or not segments:
        return 0, Checker(pem, trusted=cp, skip_below=cp["tree_size"]), []
    start = min(cp["tree_size"] // size, segments[-1])
    keys = Keys(pem)
    checker = Checker(
        pem,
        trusted=cp,
        start=start * size,
        keys=keys,
        skip_below=cp["tree_size"],
        boot_high=cp["boot_count"],
    )
    for seg in range(start):
        if seg < len(index):
            root = index[seg].root
            for pos, data in index[seg].sessions:
                keys.add_session(data, pos)
        else:  # no index line (yet): read the segment for its root and keys
            lines, _ = split_lines(_read(directory / entries_name(seg)))
            root = MerkleTree(leaf_hash(line) for line in lines).root()
            first = seg * size
            Checker(pem, keys=keys, start=first).segment(
                first, lines, [], efile="", cfile="", full=False
            )
        checker.add_peak(size, root)
    return start, checker, []


def _check_sealed(sealed: Sealed, local: MerkleTree, edata: bytes, cdata: bytes) -> list[str]:
    """A sealed segment's index line against the files just read."""
    if local.size != sealed.size // (sealed.segment + 1):
        return [sealed_problem(sealed.segment, INDEX_FILE, "not as many entries")]
    if local.root() != sealed.root:
        return [sealed_problem(sealed.segment, INDEX_FILE, "another root")]
    if hashlib.sha256(edata).hexdigest() != sealed.entries_sha256:
        return [sealed_problem(sealed.segment, INDEX_FILE, "the entries file's hash")]
    if hashlib.sha256(cdata).hexdigest() != sealed.checkpoints_sha256:
        return [sealed_problem(sealed.segment, INDEX_FILE, "the checkpoints file's hash")]
    return []


def _torn(ename: str, etorn: bytes, cname: str, ctorn: bytes, n: int) -> list[str]:
    out = []
    if etorn:
        out.append(
            f"{ename} ends in {len(etorn)} bytes without a newline (a crash mid-write, "
            f"or a write in flight); they are not the next entry yet and the broker cuts them "
            "at its next start."
        )
    if ctorn:
        out.append(
            f"{cname} ends in {len(ctorn)} bytes without a newline (a crash mid-write); the "
            "broker cuts them at its next start."
        )
    return out


def _one_pair(directory: Path, pem: bytes, trusted: dict[str, Any] | None) -> VerifyReport:
    """A log of the earlier layout (one pair of files), before the broker
    moved it into segments."""
    clines, ctorn = split_lines(_read(directory / LEGACY_CHECKPOINTS))
    elines, etorn = split_lines(_read(directory / LEGACY_ENTRIES))
    checker = Checker(pem, trusted=trusted)
    checker.segment(
        0, elines, clines, efile=LEGACY_ENTRIES, cfile=LEGACY_CHECKPOINTS, full=False, last=True
    )
    problems = checker.finish(has_checkpoints=bool(clines))
    return VerifyReport(
        ok=not problems,
        entries=checker.n,
        checkpoints=len(clines),
        problems=problems,
        unsafe_signer=checker.unsafe,
        warnings=checker.warnings()
        + _torn(LEGACY_ENTRIES, etorn, LEGACY_CHECKPOINTS, ctorn, len(elines)),
        newest=checker.top.cp if checker.top is not None and not problems else None,
    )
