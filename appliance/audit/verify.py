"""Checking an audit log end to end, or from a saved checkpoint on, with
nothing but the device's public key.

The same checks run in two places: :func:`verify_log` (``appliance audit
verify``, a desktop, an auditor with a copy of the directory) and
:class:`~appliance.audit.log.AuditLog` when it opens a log (on the segments
not yet sealed), so the broker refuses to run on a log that does not verify.

The log is read segment by segment (segments.py), so memory stays at one
segment whatever the log's length. :class:`Checker` carries what one
segment hands to the next: the peaks of the tree so far (the roots of its
complete subtrees), the keys that may sign, the highest tree size and boot
count seen, the good checkpoints.

What the checks prove is written in docs/audit.md; in short: every entry up
to the last signed checkpoint is exactly what the device key signed over, in
that order, and (given a checkpoint saved earlier elsewhere) the log still
extends it. What they cannot prove locally is that nobody cut off the newest
entries *and* the newest checkpoints together: only a checkpoint kept outside
the box (a desktop's) or a monotonic counter (the TPM's) can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from appliance.issuer.keys import UNSAFE_LABEL

from .checkpoints import (
    CHECKPOINT_FIELDS,
    ENTRY_FIELDS,
    SESSION_KIND,
    AuditTampered,
    Keys,
    checkpoint_payload,
    parse_checkpoint,
    session_statement,
    signature_ok,
)
from .merkle import MerkleTree, leaf_hash, node_hash, root_from_peaks
from .segments import split_lines

__all__ = [
    "CHECKPOINT_FIELDS",
    "MAX_BATCH",
    "SESSION_KIND",
    "AuditTampered",
    "Checker",
    "VerifyReport",
    "checkpoint_payload",
    "sealed_problem",
    "session_statement",
    "split_lines",
]

# The most entries one group commit writes. A crash between the entries'
# fsync and the checkpoint's can leave at most this many entries unsigned, so
# more than this past the last checkpoint means someone wrote them behind the
# broker's back.
MAX_BATCH = 256

# Past this many problems of one kind, say how many more instead of listing.
_MAX_LISTED = 10


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_log`.

    ``problems`` are tampering (``ok`` is false when there is any); ``warnings``
    are states a crash leaves behind, which the broker repairs at its next
    start (a torn last line, the last batch not yet checkpointed).
    ``unsafe_signer`` says a development key (plain files, not a TPM) signed.
    ``read_from`` is the first entry read: 0 for a full check; for a check
    from a saved checkpoint, the start of the segment holding it.
    ``newest`` is the newest good checkpoint, to save for the next check.
    """

    ok: bool
    entries: int
    checkpoints: int
    problems: list[str]
    unsafe_signer: bool
    warnings: list[str] = field(default_factory=list)
    read_from: int = 0
    newest: dict[str, Any] | None = None


def _capped(items: list[str], what: str) -> list[str]:
    if len(items) <= _MAX_LISTED:
        return items
    return items[:_MAX_LISTED] + [f"... and {len(items) - _MAX_LISTED} more {what}."]


def _span(a: int, b: int) -> str:
    return f"entry {a}" if a == b else f"entries {a}..{b}"


def _are(a: int, b: int) -> str:
    return "is" if a == b else "are"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


@dataclass
class _Good:
    where: str  # "line 9 of checkpoints-00000000.jsonl"
    size: int
    cp: dict[str, Any]


class Checker:
    """Checks a log streamed in order, one segment at a time.

    ``all_signatures=False`` checks only the signature of the checkpoint
    named by ``newest`` (file, line): that root commits to every entry
    before it, which is what the broker does at open. A check from a saved
    checkpoint starts at ``start`` (a segment's first entry) with ``peaks``
    the roots of the tree before it and skips checkpoints below ``skip_below``.
    """

    def __init__(
        self,
        public_key_pem: bytes,
        *,
        all_signatures: bool = True,
        newest: tuple[str, int] | None = None,
        trusted: dict[str, Any] | None = None,
        start: int = 0,
        peaks: list[tuple[int, bytes]] | None = None,
        keys: Keys | None = None,
        skip_below: int = 0,
        boot_high: int = 0,
    ) -> None:
        self.keys = keys or Keys(public_key_pem)
        self.all_signatures, self.newest = all_signatures, newest
        self.n = start
        self.signed_before = start  # a later start: a sealed segment's end, signed
        self.peaks = list(peaks or [])  # (size, root) of the complete subtrees so far
        self.skip_below = skip_below
        self.high, self.boot_high = skip_below, boot_high
        self.sequence: list[str] = []
        self.problems: list[str] = []
        self.good_sizes = [skip_below]
        self.mismatches: list[tuple[_Good, int]] = []
        self.top: _Good | None = None
        self.unsafe = False
        self.checkpoints = 0
        self.sessions: list[list[Any]] = []  # [index, data] of the last segment's
        self.trusted = trusted
        self.trusted_root: bytes | None = None

    def root_at(self, local: MerkleTree, first: int, size: int) -> bytes:
        return root_from_peaks([h for _, h in self.peaks] + local.peaks(size - first))

    def segment(
        self,
        first: int,
        lines: list[bytes],
        cp_lines: list[bytes],
        *,
        efile: str,
        cfile: str,
        full: bool,
        last: bool = True,
    ) -> MerkleTree:
        """Check one segment's entries (``first`` on) and checkpoints; ``full``
        segments become one more peak for the next; a checkpoint in a segment
        that is not the ``last`` may not cover more than the segment."""
        local = MerkleTree(leaf_hash(line) for line in lines)
        self.sessions = []
        for pos, line in enumerate(lines, start=first):
            self._entry(pos, line, f"Line {pos - first + 1} of {efile}")
        for number, raw in enumerate(cp_lines, start=1):
            where = f"line {number} of {cfile}"
            good = self._checkpoint(raw, where, (cfile, number), first, local)
            if good is not None and not last and good.size > first + local.size:
                self.problems.append(
                    f"The checkpoint on {where} covers tree size {good.size}, past the end of "
                    f"its segment at {first + local.size}: it was moved there."
                )
        if self.trusted is not None and first <= self.trusted.get("tree_size", -1) <= first + len(
            lines
        ):
            self.trusted_root = self.root_at(local, first, self.trusted["tree_size"])
        self.n = first + len(lines)
        if full:
            self.add_peak(len(lines), local.root())
        return local

    def add_peak(self, size: int, root: bytes) -> None:
        """One more complete subtree (a full segment) after the ones so far."""
        self.peaks.append((size, root))
        while len(self.peaks) > 1 and self.peaks[-1][0] == self.peaks[-2][0]:
            (size, right), (_, left) = self.peaks.pop(), self.peaks.pop()
            self.peaks.append((2 * size, node_hash(left, right)))

    def _entry(self, pos: int, line: bytes, where: str) -> None:
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.sequence.append(
                f"{where}, where entry {pos} belongs, is not valid JSON (damaged or forged)."
            )
            return
        if not isinstance(entry, dict) or set(entry) != ENTRY_FIELDS:
            self.sequence.append(
                f"{where}, where entry {pos} belongs, is not an audit entry (wrong fields)."
            )
            return
        if entry["index"] != pos:
            self.sequence.append(
                f"{where}, where entry {pos} belongs, holds an entry with index "
                f"{entry['index']!r}: entries are out of sequence (reordered, inserted or deleted)."
            )
        if entry["kind"] == SESSION_KIND:
            if self.keys.add_session(entry["data"], pos):
                self.sessions.append([pos, entry["data"]])
            else:
                self.sequence.append(
                    f"Entry {pos} names an audit session key that the device key did not "
                    "vouch for (forged)."
                )

    def _checkpoint(
        self, raw: bytes, where: str, ref: tuple[str, int], first: int, local: MerkleTree
    ) -> _Good | None:
        cp, why = parse_checkpoint(raw)
        if cp is None:
            self.problems.append(f"The checkpoint on {where} {why}.")
            return None
        size = cp["tree_size"]
        if size < self.skip_below:
            return None  # checked before: the check runs from a saved checkpoint
        self.checkpoints += 1
        key = self.keys.for_checkpoint(cp)
        if key is None:
            self.problems.append(
                f"The checkpoint on {where} (tree size {size}) names key {cp['key_id']!r}, "
                f"neither the device key {self.keys.device_id!r} nor a session key it vouched for."
            )
            return None
        signed = self.all_signatures or ref == self.newest
        if signed and not signature_ok(key, cp):
            self.problems.append(
                f"The checkpoint on {where} (tree size {size}) has a signature that does not "
                "verify with the device's public key (forged or altered)."
            )
            return None
        self.unsafe = self.unsafe or cp["signer"] == UNSAFE_LABEL
        if size < self.high:
            self.problems.append(
                f"The checkpoint on {where} has tree size {size}, smaller than the {self.high} "
                "of an earlier checkpoint: checkpoints went backwards."
            )
        self.high = max(self.high, size)
        if cp["boot_count"] < self.boot_high:
            self.problems.append(
                f"The checkpoint on {where} has boot count {cp['boot_count']}, smaller than the "
                f"{self.boot_high} of an earlier checkpoint: the boot counter went backwards."
            )
        self.boot_high = max(self.boot_high, cp["boot_count"])
        good = _Good(where, size, cp)
        if self.top is None or size >= self.top.size:
            self.top = good
        if not signed:
            return good  # an unchecked signature proves nothing, so neither does its root
        if first <= size <= first + local.size:
            if self.root_at(local, first, size).hex() == cp["root_hash"]:
                self.good_sizes.append(size)
            else:
                below = max((s for s in self.good_sizes if s < size), default=0)
                self.mismatches.append((good, below))
        elif size < first:
            self.problems.append(
                f"The checkpoint on {where} covers tree size {size}, before its segment begins "
                f"at entry {first}: it was moved there."
            )
        return good

    def finish(self, *, has_checkpoints: bool) -> list[str]:
        """Every problem found; the warnings are in :meth:`warnings`."""
        problems = _capped(self.sequence, "entries out of sequence or damaged") + self.problems
        if self.mismatches:
            good, below = self.mismatches[0]
            size = good.size
            span = _span(below, size - 1)
            what = (
                "it was edited or replaced"
                if below == size - 1
                else "one of them was edited, inserted, deleted or moved"
            )
            problems.append(
                f"{_cap(span)} do{'es' if below == size - 1 else ''} not match the checkpoint on "
                f"{good.where} (tree size {size}), while the first {below} entries do: {what}."
            )
            if len(self.mismatches) > 1:
                problems.append(
                    f"{len(self.mismatches) - 1} later checkpoints do not match either."
                )
        n, top = self.n, self.top
        if top is not None and top.size > n:
            problems.append(
                f"The log holds {n} entries but the checkpoint on {top.where} was signed over "
                f"{top.size}: {_span(n, top.size - 1)} {_are(n, top.size - 1)} missing "
                "(the log was truncated)."
            )
        signed_size = self.last_signed_size
        tail = n - signed_size
        if tail > 0 and top is None and not has_checkpoints and not self.signed_before:
            problems.append(
                f"The log holds {n} entries but no checkpoint at all: the checkpoints were "
                "deleted, so nothing proves a single entry."
            )
        elif tail > MAX_BATCH:
            problems.append(
                f"{_cap(_span(signed_size, n - 1))} ({tail} entries) are covered by no signed "
                f"checkpoint; a crash leaves at most {MAX_BATCH} unsigned, so they were added "
                "behind the broker's back."
            )
        if self.trusted is not None:
            problems += self._trusted()
        return problems

    def warnings(self) -> list[str]:
        signed_size = self.last_signed_size
        n = self.n
        if not 0 < n - signed_size <= MAX_BATCH or (self.top is None and not self.signed_before):
            return []
        return [
            f"{_cap(_span(signed_size, n - 1))} {_are(signed_size, n - 1)} not yet covered by a "
            f"signed checkpoint, so nothing proves {'it' if n - signed_size == 1 else 'them'} "
            "yet: a crash between the two fsyncs of a batch, or a write in flight. The broker "
            "signs them at its next start and records that it did."
        ]

    @property
    def last_signed_size(self) -> int:
        return self.top.size if self.top is not None else self.signed_before

    def _trusted(self) -> list[str]:
        assert self.trusted is not None
        cp, why = parse_checkpoint(self.trusted)
        if cp is None:
            return [f"The trusted checkpoint {why}."]
        key = self.keys.for_checkpoint(cp)
        if key is None or not signature_ok(key, cp):
            return ["The trusted checkpoint is not signed by the device key; it proves nothing."]
        size, n = cp["tree_size"], self.n
        if size > n:
            return [
                f"The trusted checkpoint covers {size} entries but the log holds only {n}: "
                f"{_span(n, size - 1)} {_are(n, size - 1)} gone (the log was rolled back)."
            ]
        if self.trusted_root is None or self.trusted_root.hex() != cp["root_hash"]:
            return [
                f"Entries 0..{size - 1} do not match the trusted checkpoint of tree size {size}: "
                "the log was forked or rewritten since that checkpoint was saved."
            ]
        have = self.top.size if self.top is not None else 0
        if have < size:
            return [
                f"The trusted checkpoint covers {size} entries but the log's own signed "
                f"checkpoints stop at {have}: checkpoints after entry {have - 1 if have else 0} "
                "were removed (rolled back)."
            ]
        return []


def sealed_problem(segment: int, index_file: str, what: str) -> str:
    return (
        f"The line of segment {segment} in {index_file} does not match its files ({what}): "
        "the index or the segment was changed."
    )
