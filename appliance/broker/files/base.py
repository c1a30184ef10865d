"""What every file action shares: the state (shares, snapshot store,
limits, one lock), the undo record a change stores before it begins, the
identity check, and the temp-file-then-link that lands every new file.

The verbs themselves are in reading.py, creating.py, moving.py and
deleting.py, each registering its handlers for the verbs of the registry
(appliance/verbs.py); ops.py puts them together.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from appliance.broker.files.fsutil import (
    renameat2_noreplace,
    settle,
    tmp_name,
    unlink_quietly,
    write_all,
)
from appliance.broker.files.identity import Identity, identity_at
from appliance.broker.files.trash import item_name
from appliance.broker.files.trees import Tree, walk_tree
from appliance.broker.files.undo import UndoRecord
from appliance.broker.scope import (
    ShareConfigError,
    Shares,
    Target,
)
from appliance.broker.snapshots import SnapshotError, SnapshotStore
from appliance.config import Limits
from appliance.errors import ExecutionError, InsufficientStorage
from appliance.verbs import INTENT_VERBS


@dataclass
class Outcome:
    """What an action did: its JSON result, the snapshot taken first, the undo record."""

    result: dict[str, Any]
    snapshot_id: str | None = None
    undo: UndoRecord | None = None


@dataclass(frozen=True)
class Kept:
    """Something an action keeps so that it can be undone, which takes room
    until the retention settings let it go: an item in a share's trash, or a
    snapshot in the store."""

    key: str  # "trash:SHARE/ITEM" or "snapshot:ID"
    source: str  # the canonical path it was at
    size: int  # bytes


class Keeper(Protocol):
    """Where the caller keeps account of what actions keep (the retention)."""

    def admit(self, size: int, what: str) -> None:
        """Refuse (raise) before anything changes if ``size`` more bytes kept
        would go over the budget."""

    def kept(self, kept: Kept) -> None:
        """Record, durably and before the change, that ``kept`` now exists."""


# How to record an action's undo before it changes anything.
BeforeChange = Callable[[str | None, UndoRecord], None]
Handler = TypeVar("Handler", bound=Callable[..., Outcome])
Filled = TypeVar("Filled")
ROOM_MARGIN = 16 << 20  # left free on a share's disk by a copy or write
# One handler per file verb of the registry (appliance/verbs.py); ops.py checks.
HANDLERS: dict[str, Callable[..., Outcome]] = {}


def handles(verb: str) -> Callable[[Handler], Handler]:
    if verb not in INTENT_VERBS:
        raise RuntimeError(f"{verb!r} is not a verb of the registry (appliance/verbs.py)")

    def register(handler: Handler) -> Handler:
        HANDLERS[verb] = handler
        return handler

    return register


class FileActions:
    """The state and steps the file verbs share."""

    def __init__(
        self,
        shares: Shares,
        snapshots: SnapshotStore,
        limits: Limits,
        *,
        snapshot_bytes: int = 1 << 30,
        snapshot_entries: int = 100_000,
    ):
        self.shares = shares
        self.snapshots = snapshots
        self.limits = limits
        # Largest tree (bytes, entries) a move/delete may snapshot: past this
        # the action is refused rather than done without a way back.
        self.snapshot_bytes = snapshot_bytes
        self.snapshot_entries = snapshot_entries
        store = snapshots.directory.resolve()
        for name in shares.names:
            root = shares.root(name)
            if store == root or root in store.parents or store in root.parents:
                # A store inside a share would let share users read or forge
                # snapshots; a share inside the store would be odder still.
                raise ShareConfigError(f"snapshot store {store} overlaps share {name} ({root})")
        # One mutation at a time: the checks each verb makes (free names,
        # unchanged inodes) are only meaningful if the broker is not racing itself.
        self._lock = threading.RLock()
        self._before_change: BeforeChange | None = None
        self._keeper: Keeper | None = None

    def _saved(self, snapshot_id: str | None, undo: UndoRecord) -> None:
        if self._before_change is not None:
            self._before_change(snapshot_id, undo)

    def _admit(self, size: int, what: str) -> None:
        if self._keeper is not None:
            self._keeper.admit(size, what)

    def _kept(self, kept: Kept) -> None:
        if self._keeper is not None:
            self._keeper.kept(kept)

    def _into_trash(
        self,
        fd: int,
        name: str,
        tfd: int,
        target: Target,
        size: int,
        what: str,
        record: Callable[[str], UndoRecord | None],
    ) -> str:
        """Put ``name`` in the share's trash (``tfd``) with one no-replace
        rename, after admitting and recording what it keeps and the undo
        record ``record(item)`` makes (if any). Returns the item's name;
        raises the rename's OSError (EXDEV: another file system after all)."""
        item = item_name()
        self._admit(size, what)
        self._kept(Kept(f"trash:{target.share}/{item}", target.canonical, size))
        undo = record(item)
        if undo is not None:
            self._saved(None, undo)
        try:
            renameat2_noreplace(fd, name, tfd, item)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise ExecutionError(
                    "this file system cannot rename without replacing; refusing to risk it"
                ) from None
            raise
        settle(tfd)
        settle(fd)
        return item

    def _walk(self, dir_fd: int, name: str, target: Target, *, store: bool) -> Tree:
        """The manifest of ``name`` (stored, or only hashed), within the
        limits of what an action may snapshot."""
        return walk_tree(
            dir_fd,
            name,
            target,
            self.snapshots,
            store=store,
            max_bytes=self.snapshot_bytes,
            max_entries=self.snapshot_entries,
        )

    def _check_same(self, dir_fd: int, name: str, ident: Identity, target: Target) -> None:
        """Refuse if ``name`` is no longer the exact file that was looked at."""
        if not ident.same(identity_at(dir_fd, name)):
            raise ExecutionError(f"{target.canonical} changed during the action; nothing was done")

    def _materialize(
        self,
        dir_fd: int,
        name: str,
        target: Target,
        chunks: Any,
        mode: int,
        *,
        mtime_ns: int | None = None,
        expect_sha: str | None = None,
    ) -> str:
        """Create ``name`` with the given bytes (hashed on the way), through
        :meth:`_land`; returns their sha256."""

        def fill(fd: int) -> str:
            h = hashlib.sha256()
            for chunk in chunks:
                h.update(chunk)
                write_all(fd, chunk)
            sha = h.hexdigest()
            if expect_sha is not None and sha != expect_sha:
                raise SnapshotError(f"snapshot blob {expect_sha} is damaged; not restoring it")
            return sha

        return self._land(dir_fd, name, target, fill, mode, mtime_ns=mtime_ns)

    def _land(
        self,
        dir_fd: int,
        name: str,
        target: Target,
        fill: Callable[[int], Filled],
        mode: int,
        *,
        mtime_ns: int | None = None,
    ) -> Filled:
        """Create ``name``: a temporary file filled by ``fill(fd)``, its mode
        (and time) set, one fsync, then linked into place.

        The name appears complete or not at all, and ``link()`` refuses an
        existing name, so nothing is ever overwritten.
        """
        tmp = tmp_name()
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            try:
                out = fill(fd)
                os.fchmod(fd, mode & 0o777)
                if mtime_ns is not None:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._link_into_place(dir_fd, tmp, name, target)
        except BaseException:
            unlink_quietly(dir_fd, tmp)
            raise
        unlink_quietly(dir_fd, tmp)
        settle(dir_fd)
        return out

    def _room(self, dir_fd: int, size: int, target: Target) -> None:
        """Refuse before writing ``size`` bytes where the disk has no room
        for them (and a little more: a full disk stops everything else)."""
        st = os.fstatvfs(dir_fd)
        free = st.f_bavail * st.f_frsize
        if size + ROOM_MARGIN > free:
            raise InsufficientStorage(
                f"no room for {size} bytes at {target.canonical}: {free} bytes are free on "
                "that disk; nothing was changed"
            )

    def _link_into_place(self, dir_fd: int, tmp: str, name: str, target: Target) -> None:
        try:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise ExecutionError(f"{target.canonical} already exists; never overwriting") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # File systems without hard links (exFAT sticks): the atomic
            # no-replace rename gives the same guarantee.
            try:
                renameat2_noreplace(dir_fd, tmp, dir_fd, name)
            except FileExistsError:
                raise ExecutionError(
                    f"{target.canonical} already exists; never overwriting"
                ) from None

    def _to(self, params: dict[str, Any]) -> Target:
        dest = params.get("to")
        if not isinstance(dest, Target):
            raise ExecutionError("params.to must be a resolved target")
        return dest
