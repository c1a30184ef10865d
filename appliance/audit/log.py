"""The append-only audit log: entries, a Merkle tree over them, signed checkpoints.

The files (segments.py): per segment of ``S`` entries, ``entries-N.jsonl``
(one canonical JSON line per entry,
``{"data":...,"index":N,"kind":"...","time":"...Z"}``; the leaf of the
Merkle tree is exactly those bytes without the newline) and
``checkpoints-N.jsonl`` (one signed checkpoint per durable batch); and
``segments.jsonl``, the index of the sealed segments. Mode 0700, files 0600.

Appends group-commit: whoever finds no write in progress becomes the leader,
takes every queued entry (up to ``MAX_BATCH``, and never past the end of a
segment), writes them with one write and one fsync, signs one checkpoint
over the new root, writes and fsyncs it, then wakes the others. Callers that
arrived meanwhile form the next batch. So under load, N concurrent appends
cost two fsyncs and one signature per batch, not per append, and every
``append`` still returns only once its entry and a checkpoint covering it
are on disk. A batch that fills a segment seals it: its line goes into the
index and the tree forgets the hashes below its root (memory and start-up
time stay bounded by one segment, not the log).

Opening a log verifies it first (opening.py) and refuses with
:class:`AuditTampered` if it does not; the only repairs are those a crash
explains (a torn last line; the last batch not yet checkpointed; a sealed
segment without its index line), and each is recorded as an
``audit.recovered`` entry. A full disk (ENOSPC while writing) is not a
crash: the batch is cut back, the caller gets 507 (after ``on_full`` was
given one chance to free room), and the log keeps working.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, InsufficientStorage, NotFound, Unavailable
from appliance.intents import canonical_json
from appliance.issuer.keys import UNSAFE_LABEL, Signer

from .checkpoints import SESSION_KIND, AuditTampered, checkpoint_payload, session_statement
from .files import DiskFull, SegmentFiles, write_all
from .merkle import SegmentChanged, leaf_hash
from .opening import open_segments, sessions_of
from .segments import INDEX_FILE, SEGMENT_ENTRIES, fsync_dir
from .verify import MAX_BATCH

log = logging.getLogger("appliance.audit")

LOCK_FILE = "lock"
MAX_ENTRY_BYTES = 1 << 20  # one entry's line; bigger data belongs in a file, hashed here
MAX_PAGE = 1000  # entries() returns at most this many at once
# Kinds are dotted lower-case names ("intent.executed"); "audit." is the log's own.
_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")
_MAX_KIND = 64


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """A tamper-evident, append-only, group-committing audit log in ``directory``.

    Thread-safe. One process at a time: a second opener (even in the same
    process) is refused with :class:`~appliance.errors.Unavailable`.
    """

    def __init__(
        self,
        directory: Path,
        signer: Signer,
        *,
        signer_label: str,
        boot_count: int = 0,
        session_signer: Signer | None = None,
        segment_entries: int = SEGMENT_ENTRIES,
        on_full: Callable[[], bool] | None = None,
    ) -> None:
        """``signer`` is the device key. With ``session_signer`` (an in-memory key
        for this start), the device key signs one ``audit.session`` entry that
        vouches for it, and the session key signs the checkpoints from then on,
        which keeps a slow TPM off every append. ``segment_entries``: entries
        a segment (a power of two) for a new log; an existing log keeps its
        own. ``on_full()``: called once when a write finds the disk full; it
        returns whether it freed room (the batch is then tried again)."""
        # A development key must say so in every checkpoint it signs.
        if signer.unsafe and signer_label != UNSAFE_LABEL:
            raise ValueError(f"an unsafe signer must be labelled {UNSAFE_LABEL!r}")
        self.directory = Path(directory)
        self._signer = signer
        self._label = signer_label
        self.boot_count = boot_count  # carried by every checkpoint signed from now on
        self._on_full = on_full
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[bytes] = []  # encoded entries not yet handed to a leader
        self._writing = False  # a leader is writing a batch
        self._closing = False
        self._failed: str | None = None  # why the log refuses appends until reopened
        # Bumped when a batch is dropped unwritten (its checkpoint could not be
        # signed, or the disk is full): waiting appenders of the old
        # generation get ``_dropped``.
        self._gen = 0
        self._dropped: ApplianceError = Unavailable("")
        self._batches = 0
        self._files: SegmentFiles | None = None

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise Unavailable(f"the audit log in {self.directory} is open elsewhere") from None
        try:
            self._open(segment_entries)
            if session_signer is not None:
                if session_signer.unsafe != signer.unsafe:
                    raise ValueError("the session key must be as (un)safe as the device key")
                statement = session_statement(signer, session_signer, boot_count=boot_count)
                self._signer = session_signer
                self._append(SESSION_KIND, statement)
        except BaseException:
            self._release()
            raise

    # -- opening ------------------------------------------------------------

    def _open(self, segment_entries: int) -> None:
        # Verify before touching anything: a log that does not verify is
        # evidence and stays exactly as found (opening.py).
        pem = self._signer.public_key_pem()
        state = open_segments(self.directory, pem, segment_entries, self._leaves)
        self._S = state.size
        self._tree = state.tree
        self._latest: dict[str, Any] | None = state.latest
        self._durable = self._next = state.tree.size
        files = self._files = SegmentFiles(self.directory, state.size, len(state.index))
        files.open(state.active, state.lines)
        # Cut what the index holds past its good lines (a torn line): it is
        # derived, and rebuilt from the segments below.
        index = self.directory / INDEX_FILE
        if index.exists() and index.stat().st_size != state.index_bytes:
            os.truncate(index, state.index_bytes)
        if state.created:
            fsync_dir(self.directory)
        # A torn last line is a write that never became durable (its append
        # never returned): cut it.
        if state.torn or state.cp_torn:
            files.cut_back(files.offsets[-1], state.cp_bytes)
        # Complete entries past the last checkpoint: a crash between the two
        # fsyncs of a batch (the check refused more than one batch's worth).
        late = self._durable - state.last_signed
        if late or self._latest is None:
            cp = self._sign_checkpoint(self._durable)
            write_all(files.cfd, canonical_json(cp) + b"\n")
            files.fsync(files.cfd)
            self._latest = cp
        # Full segments without their index line: a crash right after the
        # batch that filled them.
        for seg in state.to_seal:
            files.seal(self._tree, seg, sessions_of)
        if state.torn or state.cp_torn or late or state.to_seal:
            log.warning(
                "audit log %s recovered from a crash: %d torn bytes cut, %d entries signed "
                "late, %d segments sealed",
                self.directory,
                len(state.torn) + len(state.cp_torn),
                late,
                len(state.to_seal),
            )
            self._append(
                "audit.recovered",
                {
                    "dropped_bytes": len(state.torn),
                    "dropped_checkpoint_bytes": len(state.cp_torn),
                    "checkpointed_at_open": late,
                    "segments_sealed_at_open": state.to_seal,
                    "reason": "crash recovery at open: a torn final line is cut, entries "
                    "written but not yet checkpointed are checkpointed, full segments are sealed",
                },
            )

    def _leaves(self, segment: int) -> list[bytes]:
        assert self._files is not None
        return self._files.leaves(segment)

    def _release(self) -> None:
        if self._files is not None:
            self._files.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = -1

    # -- writing -----------------------------------------------------------

    def _sign_checkpoint(self, size: int) -> dict[str, Any]:
        """Sign the root of the first ``size`` entries (nothing is written yet)."""
        cp: dict[str, Any] = {
            "tree_size": size,
            "root_hash": self._tree.root(size).hex(),
            "time": _utc_now(),
            "key_id": self._signer.key_id,
            "signer": self._label,
            "boot_count": self.boot_count,
        }
        cp["signature"] = base64.b64encode(self._signer.sign(checkpoint_payload(cp))).decode()
        return cp

    def append(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Record one event; returns the entry (with its ``leaf_hash``) once durable.

        Blocks until the entry and a signed checkpoint covering it are
        fsync'd. Raises :class:`~appliance.errors.Unavailable` if the log
        cannot write (the broker must then stop privileged work).
        """
        if not isinstance(kind, str) or len(kind) > _MAX_KIND or not _KIND.fullmatch(kind):
            raise ApplianceError(f"audit kind {kind!r} is not a dotted lower-case name")
        if kind.startswith("audit."):
            raise ApplianceError(f"audit kind {kind!r} is reserved for the log itself")
        return self._append(kind, data)

    def append_quietly(self, kind: str, data: dict[str, Any]) -> None:
        """Record an event that follows an outcome already decided (a failure
        being reported, a press the queue already handled): if the log cannot
        take it, that is logged and the caller carries on (a log that failed
        to write has closed itself, so nothing privileged runs after it)."""
        try:
            self.append(kind, data)
        except ApplianceError:
            log.exception("could not audit %s", kind)

    def _append(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ApplianceError("audit data must be a JSON object")
        try:
            body = canonical_json(data)
        except (TypeError, ValueError) as exc:
            raise ApplianceError(f"audit data is not JSON: {exc}") from None
        if len(body) > MAX_ENTRY_BYTES:
            raise ApplianceError(f"audit data is {len(body)} bytes; at most {MAX_ENTRY_BYTES}")
        kind_json = json.dumps(kind).encode()
        with self._cond:
            self._check_open()
            index = self._next
            self._next += 1
            gen = self._gen
            # canonical_json of {"index","time","kind","data"}, built by hand
            # from the pre-encoded data so the lock is held for microseconds
            # (sorted keys: data, index, kind, time; a test checks equality).
            line = b"".join(
                (
                    b'{"data":',
                    body,
                    b',"index":',
                    str(index).encode(),
                    b',"kind":',
                    kind_json,
                    b',"time":"',
                    _utc_now().encode(),
                    b'"}',
                )
            )
            self._queue.append(line)
            while self._durable <= index:
                if self._failed is not None:
                    raise Unavailable(self._failed)
                if gen != self._gen:  # the batch holding this entry was dropped
                    dropped = self._dropped
                    raise type(dropped)(dropped.reason, code=dropped.code)
                if self._writing:
                    self._cond.wait()
                else:
                    self._lead()
            h = self._tree.leaf(index)
        entry = json.loads(line)
        entry["leaf_hash"] = h.hex()
        return entry

    def _check_open(self) -> None:
        if self._failed is not None:
            raise Unavailable(self._failed)
        if self._closing:
            raise Unavailable("the audit log is closed")

    def _lead(self) -> None:
        """Write one batch. Called with the lock held; drops it around the I/O."""
        files = self._files
        assert files is not None
        start = self._durable
        if start == files.first + self._S:
            files.open(files.active + 1)  # the active segment is full
        # A batch never crosses a segment's end.
        take = min(MAX_BATCH, files.first + self._S - start)
        batch = self._queue[:take]
        del self._queue[:take]
        end = start + len(batch)
        ends = files.ends()
        self._writing = True
        # Readers only look at the first self._durable leaves, so growing the
        # tree before the batch is durable shows them nothing new.
        for line in batch:
            self._tree.append_hash(leaf_hash(line))
        try:
            # Sign first: a signer that cannot sign (the TPM went away) leaves
            # nothing written, so the log stays whole and serves again once
            # the signer is back.
            self._lock.release()
            try:
                cp = self._sign_checkpoint(end)
            finally:
                self._lock.acquire()
        except BaseException as exc:
            log.error("audit log %s: could not sign a checkpoint: %r", self.directory, exc)
            reason = exc.reason if isinstance(exc, ApplianceError) else repr(exc)
            self._drop(start, Unavailable(f"the audit log cannot sign a checkpoint: {reason}"))
            raise self._dropped from exc
        try:
            self._lock.release()
            try:
                files.write_batch(batch, canonical_json(cp), self._on_full)
                if end == files.first + self._S:
                    files.seal(self._tree, files.active, sessions_of)
            finally:
                self._lock.acquire()
            self._durable = end
            self._latest = cp
            self._batches += 1
        except DiskFull as full:
            self._drop(start, InsufficientStorage(full.reason, code="disk_full"))
            raise self._dropped from None
        except BaseException as exc:
            self._fail(exc, start, ends)
            raise Unavailable(self._failed or "audit log failed") from exc
        finally:
            self._writing = False
            self._cond.notify_all()

    def _drop(self, start: int, why: ApplianceError) -> None:
        """This batch and everything queued behind it are dropped, unwritten."""
        self._tree.truncate(start)
        self._queue.clear()
        self._next = start
        self._gen += 1
        self._dropped = why
        self._writing = False
        self._cond.notify_all()

    def _fail(self, exc: BaseException, size: int, ends: tuple[int, int]) -> None:
        """Undo a batch that did not complete and refuse appends until reopened.

        Fail closed: once a write, fsync or signature fails, nobody can say
        what reached the disk, so no further entry is accepted here; reopening
        re-verifies the files and repairs only what a crash explains.
        """
        log.error("audit log %s failed, refusing appends: %r", self.directory, exc)
        self._failed = f"the audit log failed to write ({exc!r}); restart the broker"
        self._queue.clear()
        self._tree.truncate(size)
        try:
            assert self._files is not None
            self._files.cut_back(*ends)
        except OSError:
            log.exception("audit log %s: could not roll back a failed batch", self.directory)

    # -- reading -----------------------------------------------------------

    @property
    def size(self) -> int:
        """How many entries are durable."""
        with self._lock:
            return self._durable

    @property
    def closed(self) -> bool:
        """True once the log accepts no more appends: closed, or failed (see ``failure``)."""
        return self._closing or self._failed is not None

    @property
    def failure(self) -> str | None:
        """Why the log refuses appends after a failed write, or None."""
        return self._failed

    @property
    def fsync_count(self) -> int:
        """fsync calls made by this log (for tests and benchmarks)."""
        return self._files.fsyncs if self._files is not None else 0

    @property
    def batch_count(self) -> int:
        """Group commits made by this log (for tests and benchmarks)."""
        return self._batches

    def root_hash(self) -> str:
        """The Merkle root (hex) over every durable entry."""
        with self._lock:
            return self._tree.root(self._durable).hex()

    def latest_checkpoint(self) -> dict[str, Any]:
        """The newest signed checkpoint (a copy); desktops keep these."""
        with self._lock:
            assert self._latest is not None  # written at open if there was none
            return dict(self._latest)

    def entries(self, start: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Durable entries ``start`` .. ``start+limit-1`` (each with its ``leaf_hash``)."""
        if start < 0 or limit < 0:
            raise ApplianceError("start and limit must not be negative")
        limit = min(limit, MAX_PAGE)
        with self._lock:
            self._check_readable()
            files = self._files
            assert files is not None
            stop = min(start + limit, self._durable)
            if start >= stop:
                return []
            try:
                hashes = [self._tree.leaf(i) for i in range(start, stop)]
                # Earlier segments are read back from their files; the
                # active one through its offsets.
                lines = [
                    files.lines(i // self._S)[i % self._S]
                    for i in range(start, min(stop, files.first))
                ]
                if stop > files.first:
                    lines += files.read_active(
                        max(start, files.first) - files.first, stop - files.first
                    )
            except (SegmentChanged, IndexError):
                raise AuditTampered(f"audit entries {start}..{stop - 1} changed on disk") from None
        out: list[dict[str, Any]] = []
        for line, h in zip(lines, hashes, strict=True):
            if leaf_hash(line) != h:  # changed under us on disk: say so, do not serve it
                raise AuditTampered(f"audit entry {start + len(out)} changed on disk")
            entry = json.loads(line)
            entry["leaf_hash"] = h.hex()
            out.append(entry)
        return out

    def _check_readable(self) -> None:
        if self._files is None or self._files.efd < 0:
            raise Unavailable("the audit log is closed")

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[str]:
        """RFC 9162 inclusion proof (hex hashes) of entry ``index`` in the tree of ``tree_size``."""
        with self._lock:
            size = self._durable if tree_size is None else tree_size
            if not 0 <= size <= self._durable:
                raise NotFound(f"no tree of size {size}; the log holds {self._durable} entries")
            if not 0 <= index < size:
                raise NotFound(f"no entry {index} in a tree of size {size}")
            try:
                return [h.hex() for h in self._tree.inclusion_proof(index, size)]
            except SegmentChanged as e:
                raise AuditTampered(str(e)) from None

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[str]:
        """RFC 9162 consistency proof (hex hashes) from ``old_size`` to ``new_size``."""
        with self._lock:
            size = self._durable if new_size is None else new_size
            if not 0 <= size <= self._durable:
                raise NotFound(f"no tree of size {size}; the log holds {self._durable} entries")
            if not 0 <= old_size <= size:
                raise ApplianceError(f"old size {old_size} is outside 0..{size}")
            try:
                return [h.hex() for h in self._tree.consistency_proof(old_size, size)]
            except SegmentChanged as e:
                raise AuditTampered(str(e)) from None

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        """Finish the appends already accepted, then release the files and the lock."""
        with self._cond:
            self._closing = True
            while self._failed is None and (self._writing or self._queue):
                self._cond.wait()
            while self._writing:
                self._cond.wait()
            self._release()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
