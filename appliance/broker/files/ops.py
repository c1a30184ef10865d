"""The file actions the broker executes, each with a snapshot and an undo.

Rules every verb follows (docs/files.md has the per-verb order):

* All access goes through :class:`~appliance.broker.scope.Shares` directory
  fds; final names are handled with ``*at()`` calls, never by path string.
* Never overwrite: files land with ``link()`` (fails if the name exists),
  directories with ``renameat2(RENAME_NOREPLACE)``.
* Destroy nothing: a move is a rename, a delete a rename into the share's
  trash (trash.py); only a delete across file systems copies the content
  into the :class:`~appliance.broker.snapshots.SnapshotStore` (fsynced)
  first. The undo record is stored before the first change. So a crash at
  any point leaves every original file at its source, at its destination,
  in the trash, or in the store.
* What an action keeps for its undo (a trash item, a snapshot) is admitted
  against the retention budget and recorded before the change (``keeper``).
* A failure half-way (an OSError, not a crash) is rolled back where that is
  possible, so the caller sees "done" or "not done", not something between.
* Undo records are plain JSON; an undo re-checks that nothing changed since
  (content hashes, free paths) and refuses with a reason otherwise.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from typing import Any

from appliance.broker.files.base import HANDLERS, BeforeChange, Keeper, Outcome
from appliance.broker.files.creating import Creating
from appliance.broker.files.deleting import Deleting
from appliance.broker.files.fsutil import (
    LEFTOVER_RE,
    os_error,
    remove_tree,
    settle,
    unlink_if_same,
)
from appliance.broker.files.identity import Identity, identity_at
from appliance.broker.files.moving import Moving
from appliance.broker.files.reading import Reading
from appliance.broker.files.trash import open_trash
from appliance.broker.files.undo import UndoRecord
from appliance.broker.scope import (
    Target,
    fsync_dir,
    lstat_at,
)
from appliance.errors import ApplianceError, ExecutionError
from appliance.verbs import INTENT_VERBS, REGISTRY, Undo


class FileOps(Reading, Creating, Moving, Deleting):
    """Executes the ``file.*`` verbs on targets inside the shares."""

    def execute(
        self,
        verb: str,
        target: Target,
        params: dict[str, Any],
        *,
        before_change: BeforeChange | None = None,
        keeper: Keeper | None = None,
    ) -> Outcome:
        """Run one verb on one already-parsed target. Raises ApplianceError subclasses.

        ``before_change(snapshot_id, undo)`` is called for a move, rename or
        delete before anything changes, so the caller can record how to undo
        an action that a crash interrupts. ``keeper`` admits and records what
        the action keeps for its undo (a trash item, a snapshot).
        """
        handler = HANDLERS.get(verb)
        if handler is None:
            raise ExecutionError(f"unknown verb {verb!r}")
        if not isinstance(target, Target):
            raise ExecutionError("target must be a parsed Target")
        with self._lock:
            self._before_change, self._keeper = before_change, keeper
            try:
                return handler(self, target, dict(params or {}))
            except ApplianceError:
                raise
            except OSError as e:
                raise os_error(f"{verb} on {target.canonical} failed", e) from None
            finally:
                self._before_change, self._keeper = None, None

    def settle_interrupted(self, undo: UndoRecord) -> bool:
        """After a crash in the middle of a move, rename or delete: bring it to
        exactly "before" or exactly "after", and say whether it took effect
        (then its undo record applies).

        A file move links the destination before it unlinks the source, so a
        crash in between leaves two names for one inode: the destination name
        is removed again (before). Only a destination left alone means after.
        """
        with self._lock:
            try:
                if undo.how is Undo.restore:
                    target = self.shares.parse(undo.target)
                    with self.shares.open_parent(target) as (fd, name):
                        return lstat_at(fd, name) is None
                if undo.how is Undo.move_back:
                    src = self.shares.parse(undo.source)
                    dest = self.shares.parse(undo.dest)
                    with (
                        self.shares.open_parent(src) as (sfd, sname),
                        self.shares.open_parent(dest) as (dfd, dname),
                    ):
                        s, d = lstat_at(sfd, sname), lstat_at(dfd, dname)
                        if (
                            s is not None
                            and d is not None
                            and stat.S_ISREG(d.st_mode)
                            and ((s.st_dev, s.st_ino) == (d.st_dev, d.st_ino))
                        ):
                            unlink_if_same(dfd, dname, d.st_ino)
                            fsync_dir(dfd)
                            return False
                        return s is None and d is not None
            except (ApplianceError, OSError):
                return False  # a parent vanished: leave things as they are
        return False

    def sweep_leftovers(self, targets: Iterable[Target]) -> list[str]:
        """After a crash, when nothing is in flight: remove the hidden names an
        interrupted action can leave beside the targets it worked on.

        A write, copy or restore builds its file (or tree) under
        ``.appliance-tmp-*`` and a directory delete renames the tree to
        ``.appliance-deleting-*``, both in the target's own directory; neither
        holds anything that is not either at its final name or in the snapshot
        store. Only those directories are looked at, only names of exactly that
        form are removed, and never through a symlink. Returns what was removed.
        """
        removed: list[str] = []
        with self._lock:
            for parent in {t.parent() for t in targets if not t.is_root}:
                try:
                    with self.shares.open_dir(parent) as fd:
                        for name in sorted(os.listdir(fd)):
                            st = lstat_at(fd, name) if LEFTOVER_RE.match(name) else None
                            if st is None:
                                continue
                            if stat.S_ISDIR(st.st_mode):
                                remove_tree(fd, name)
                            elif stat.S_ISREG(st.st_mode):
                                os.unlink(name, dir_fd=fd)
                            else:
                                continue
                            removed.append(parent.child(name).canonical)
                        settle(fd)
                except (ApplianceError, OSError):
                    continue  # the directory is gone or unreadable: nothing to sweep there
        return removed

    def undo(self, undo: UndoRecord, *, keeper: Keeper | None = None) -> dict[str, Any]:
        """Reverse an action from its undo record, if nothing changed since.
        (Undoing a write or copy puts the file in the trash: ``keeper``.)"""
        reverse = _UNDOERS.get(undo.how)
        if reverse is None:
            raise ExecutionError(f"{undo.verb} has no undo")
        with self._lock:
            self._keeper = keeper
            try:
                return reverse(self, undo)
            except ApplianceError:
                raise
            except OSError as e:
                raise os_error(f"undo of {undo.verb} failed", e) from None
            finally:
                self._keeper = None

    def collect_snapshot_garbage(self) -> int:
        """Blobs no snapshot names any more, removed while no action runs."""
        with self._lock:
            return self.snapshots.collect_garbage()

    def purge_trash_item(self, share: str, item: str, ident: Identity | None) -> bool:
        """Remove one item from a share's trash for good (retention). Only
        the item recorded: if another thing stands under its name, it is
        left alone. Returns whether something was removed."""
        with self._lock:
            try:
                with open_trash(self.shares, share, create=False) as tfd:
                    if tfd is None:
                        return False
                    now = identity_at(tfd, item)
                    if now is None or (
                        ident is not None
                        and (now.kind, now.ino)
                        != (
                            ident.kind,
                            ident.ino,
                        )
                    ):
                        return False
                    if now.kind == "dir":
                        remove_tree(tfd, item)
                    else:
                        os.unlink(item, dir_fd=tfd)
                    settle(tfd)
                    return True
            except OSError as e:
                raise os_error(
                    f"purging {item} from the trash of share {share} failed", e
                ) from None


_UNDOERS: dict[Undo, Callable[[FileOps, UndoRecord], dict[str, Any]]] = {
    Undo.restore: FileOps._undo_delete,
    Undo.move_back: FileOps._undo_move,
    Undo.remove_created: FileOps._undo_create,
    Undo.remove_dirs: FileOps._undo_mkdir,
}
# Every verb a plan may name has its handler, and every way of undoing its undoer.
if set(HANDLERS) != set(INTENT_VERBS) or not {REGISTRY[v].undo for v in INTENT_VERBS} - {
    Undo.none
} <= set(_UNDOERS):
    raise RuntimeError("the file actions and the verb registry disagree (appliance/verbs.py)")
