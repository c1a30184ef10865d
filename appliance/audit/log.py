"""The append-only audit log: entries, a Merkle tree over them, signed checkpoints.

Two files in one directory (mode 0700, files 0600):

* ``entries.jsonl``: one canonical JSON line per entry,
  ``{"data":...,"index":N,"kind":"...","time":"...Z"}``. The leaf of the
  Merkle tree is exactly those bytes (without the newline).
* ``checkpoints.jsonl``: one signed checkpoint per durable batch,
  ``{"tree_size","root_hash","time","key_id","signer","signature"}``; the
  signature (ES256, DER, base64) covers the canonical JSON of the other five.

Appends group-commit: whoever finds no write in progress becomes the leader,
takes every queued entry (up to ``MAX_BATCH``), writes them with one write and
one fsync, signs one checkpoint over the new root, writes and fsyncs it, then
wakes the others. Callers that arrived meanwhile form the next batch. So under
load, N concurrent appends cost two fsyncs and one signature per batch, not per
append, and every ``append`` still returns only once its entry and a
checkpoint covering it are on disk.

Opening a log verifies it first (see :mod:`appliance.audit.verify`) and
refuses with :class:`AuditTampered` if it does not; the only repairs are those
a crash explains (a torn last line; the last batch not yet checkpointed), and
each is recorded as an ``audit.recovered`` entry.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
import threading
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, NotFound, Unavailable
from appliance.intents import canonical_json
from appliance.issuer.keys import UNSAFE_LABEL, Signer

from .merkle import leaf_hash
from .verify import (
    CHECKPOINTS_FILE,
    ENTRIES_FILE,
    MAX_BATCH,
    SESSION_KIND,
    AuditTampered,
    check_log,
    checkpoint_payload,
    session_statement,
    split_lines,
)

log = logging.getLogger("appliance.audit")

LOCK_FILE = "lock"
MAX_ENTRY_BYTES = 1 << 20  # one entry's line; bigger data belongs in a file, hashed here
MAX_PAGE = 1000  # entries() returns at most this many at once
# Kinds are dotted lower-case names ("intent.executed"); "audit." is the log's own.
_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")
_MAX_KIND = 64


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
    ) -> None:
        """``signer`` is the device key. With ``session_signer`` (an in-memory key
        for this start), the device key signs one ``audit.session`` entry that
        vouches for it, and the session key signs the checkpoints from then on,
        which keeps a slow TPM off every append."""
        # A development key must say so in every checkpoint it signs.
        if signer.unsafe and signer_label != UNSAFE_LABEL:
            raise ValueError(f"an unsafe signer must be labelled {UNSAFE_LABEL!r}")
        self.directory = Path(directory)
        self._signer = signer
        self._label = signer_label
        self.boot_count = boot_count  # carried by every checkpoint signed from now on
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[bytes] = []  # encoded entries not yet handed to a leader
        self._writing = False  # a leader is writing a batch
        self._closing = False
        self._failed: str | None = None  # why the log refuses appends until reopened
        # Bumped when a batch is dropped unwritten (its checkpoint could not be
        # signed): waiting appenders of the old generation get ``_dropped``.
        self._gen = 0
        self._dropped = ""
        self._fsyncs = 0
        self._batches = 0
        self._fds: list[int] = []

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise Unavailable(f"the audit log in {self.directory} is open elsewhere") from None
        try:
            self._open()
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

    def _open(self) -> None:
        epath, cpath = self.directory / ENTRIES_FILE, self.directory / CHECKPOINTS_FILE
        created = not epath.exists() or not cpath.exists()
        edata = epath.read_bytes() if epath.exists() else b""
        cdata = cpath.read_bytes() if cpath.exists() else b""
        lines, torn = split_lines(edata)
        cp_lines, cp_torn = split_lines(cdata)

        # Verify before touching anything: a log that does not verify is
        # evidence and stays exactly as found.
        pem = self._signer.public_key_pem()
        result = check_log(lines, cp_lines, pem, all_signatures=False)
        if result.problems:
            # The fast check found something: the full one says where.
            result = check_log(lines, cp_lines, pem, all_signatures=True)
            shown = " ".join(result.problems[:3])
            more = len(result.problems) - 3
            log.error("audit log %s does not verify: %s", self.directory, result.problems)
            raise AuditTampered(
                f"The audit log in {self.directory} does not verify: {shown}"
                + (f" (and {more} more problems)" if more > 0 else "")
            )

        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._efd = os.open(epath, flags, 0o600)
        self._fds.append(self._efd)
        self._cfd = os.open(cpath, flags, 0o600)
        self._fds.append(self._cfd)
        if created:
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                self._fsync(dfd)
            finally:
                os.close(dfd)

        # A torn last line is a write that never became durable (its append
        # never returned): cut it.
        if torn:
            os.ftruncate(self._efd, len(edata) - len(torn))
            self._fsync(self._efd)
        if cp_torn:
            os.ftruncate(self._cfd, len(cdata) - len(cp_torn))
            self._fsync(self._cfd)

        self._tree = result.tree
        self._offsets = array("Q", [0])  # byte offset of each entry, plus the end
        for line in lines:
            self._offsets.append(self._offsets[-1] + len(line) + 1)
        self._durable = self._next = len(lines)
        self._latest: dict[str, Any] | None = json.loads(cp_lines[-1]) if cp_lines else None

        # Complete entries past the last checkpoint: a crash between the two
        # fsyncs of a batch (check_log refused more than one batch's worth).
        late = self._durable - result.last_signed_size
        if late or self._latest is None:
            cp = self._sign_checkpoint(self._durable)
            _write_all(self._cfd, canonical_json(cp) + b"\n")
            self._fsync(self._cfd)
            self._latest = cp
        if torn or cp_torn or late:
            log.warning(
                "audit log %s recovered from a crash: %d torn bytes cut, %d entries signed late",
                self.directory,
                len(torn) + len(cp_torn),
                late,
            )
            self._append(
                "audit.recovered",
                {
                    "dropped_bytes": len(torn),
                    "dropped_checkpoint_bytes": len(cp_torn),
                    "checkpointed_at_open": late,
                    "reason": "crash recovery at open: a torn final line is cut, entries "
                    "written but not yet checkpointed are checkpointed",
                },
            )

    def _release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = -1

    # -- writing -----------------------------------------------------------

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)
        self._fsyncs += 1

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
                    raise Unavailable(self._dropped)
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
        batch = self._queue[:MAX_BATCH]
        del self._queue[:MAX_BATCH]
        start = self._durable
        end = start + len(batch)
        e_end, c_size = self._offsets[-1], os.fstat(self._cfd).st_size
        self._writing = True
        leaves = [leaf_hash(line) for line in batch]
        # Readers only look at the first self._durable leaves, so growing the
        # tree before the batch is durable shows them nothing new.
        for h in leaves:
            self._tree.append_hash(h)
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
            # Drop this batch and everything queued behind it, unwritten.
            self._tree.truncate(start)
            self._queue.clear()
            self._next = start
            self._gen += 1
            self._dropped = f"the audit log cannot sign a checkpoint: {reason}"
            self._writing = False
            self._cond.notify_all()
            raise Unavailable(self._dropped) from exc
        try:
            self._lock.release()
            try:
                _write_all(self._efd, b"\n".join(batch) + b"\n")
                self._fsync(self._efd)
                _write_all(self._cfd, canonical_json(cp) + b"\n")
                self._fsync(self._cfd)
            finally:
                self._lock.acquire()
            for line in batch:
                self._offsets.append(self._offsets[-1] + len(line) + 1)
            self._durable = end
            self._latest = cp
            self._batches += 1
        except BaseException as exc:
            self._fail(exc, start, e_end, c_size)
            raise Unavailable(self._failed or "audit log failed") from exc
        finally:
            self._writing = False
            self._cond.notify_all()

    def _fail(self, exc: BaseException, size: int, e_end: int, c_size: int) -> None:
        """Undo a batch that did not complete and refuse appends until reopened.

        Fail closed: once a write, fsync or signature fails, nobody can say
        what reached the disk, so no further entry is accepted here; reopening
        re-verifies the files and repairs only what a crash explains.
        """
        log.error("audit log %s failed, refusing appends: %r", self.directory, exc)
        self._failed = f"the audit log failed to write ({exc!r}); restart the broker"
        self._queue.clear()
        self._tree.truncate(size)
        del self._offsets[size + 1 :]
        try:
            os.ftruncate(self._efd, e_end)
            os.ftruncate(self._cfd, c_size)
            self._fsync(self._efd)
            self._fsync(self._cfd)
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
        return self._fsyncs

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
            stop = min(start + limit, self._durable)
            if start >= stop:
                return []
            lo, hi = self._offsets[start], self._offsets[stop]
            hashes = [self._tree.leaf(i) for i in range(start, stop)]
            # The file is append-only and these bytes are durable: reading
            # them outside the lock races with nothing.
            fd = self._efd
        raw = os.pread(fd, hi - lo, lo)
        out: list[dict[str, Any]] = []
        for line, h in zip(raw.split(b"\n")[:-1], hashes, strict=True):
            if leaf_hash(line) != h:  # changed under us on disk: say so, do not serve it
                raise AuditTampered(f"audit entry {start + len(out)} changed on disk")
            entry = json.loads(line)
            entry["leaf_hash"] = h.hex()
            out.append(entry)
        return out

    def _check_readable(self) -> None:
        if not self._fds:
            raise Unavailable("the audit log is closed")

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[str]:
        """RFC 9162 inclusion proof (hex hashes) of entry ``index`` in the tree of ``tree_size``."""
        with self._lock:
            size = self._durable if tree_size is None else tree_size
            if not 0 <= size <= self._durable:
                raise NotFound(f"no tree of size {size}; the log holds {self._durable} entries")
            if not 0 <= index < size:
                raise NotFound(f"no entry {index} in a tree of size {size}")
            return [h.hex() for h in self._tree.inclusion_proof(index, size)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[str]:
        """RFC 9162 consistency proof (hex hashes) from ``old_size`` to ``new_size``."""
        with self._lock:
            size = self._durable if new_size is None else new_size
            if not 0 <= size <= self._durable:
                raise NotFound(f"no tree of size {size}; the log holds {self._durable} entries")
            if not 0 <= old_size <= size:
                raise ApplianceError(f"old size {old_size} is outside 0..{size}")
            return [h.hex() for h in self._tree.consistency_proof(old_size, size)]

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
