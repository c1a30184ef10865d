"""Retention: how long, and within how much room, the box keeps what undo needs.

A delete keeps what it deleted in the share's trash; a delete across file
systems keeps a snapshot; undoing a write or copy puts the file in the trash.
Each such thing is a row here (``retained``), recorded before the action
changes anything, with its size and when it was kept:

* an action that would keep more than the budget allows is refused before
  it changes anything (``admit``; 507, with the figures and what to do);
* items older than ``days`` are purged by the broker (at start and then
  every ``purge_interval_s``), each purge audited (``retention.purged``);
  the owner can purge earlier (``appliance retention purge``);
* an undo of an action whose kept item was purged is refused with why and
  when (``check_undo``; 410), before anyone is asked to press;
* a purge is marked in the database before the item is removed and audited
  after, so a crash in between is finished (and audited) at the next start.

Nothing is ever dropped silently to make room: an undo record either finds
what it points to, or says it was purged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from appliance.audit import AuditLog
from appliance.broker.files import FileOps, Kept, UndoRecord
from appliance.broker.snapshots import SnapshotError, SnapshotStore
from appliance.config import RetentionSettings
from appliance.db import Database
from appliance.errors import ApplianceError, ExecutionError, InsufficientStorage

log = logging.getLogger("appliance.broker")

SCHEMA = """
CREATE TABLE IF NOT EXISTS retained (
    key TEXT PRIMARY KEY,      -- trash:SHARE/ITEM or snapshot:ID
    action_id TEXT,            -- the action that kept it (NULL: an earlier version's snapshot)
    source TEXT NOT NULL,      -- the path it was at
    bytes INTEGER NOT NULL,
    created REAL NOT NULL,     -- when it was kept (seconds since the epoch)
    status TEXT NOT NULL,
    ended REAL,                -- when it was purged or released
    reason TEXT
);
CREATE INDEX IF NOT EXISTS retained_action ON retained(action_id);
CREATE INDEX IF NOT EXISTS retained_status ON retained(status, created);
"""
DAY_S = 86400.0


class Held(StrEnum):
    kept = "kept"  # in the trash or the store, counted against the budget
    purging = "purging"  # being removed (a crash here is finished at start)
    purged = "purged"  # gone; an undo that needs it says so
    released = "released"  # not needed any more (undone, or the action did not happen)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_of(undo: UndoRecord) -> str | None:
    """The retained item an undo record needs, if any."""
    if undo.trash:
        share = undo.target.removeprefix("share:").partition("/")[0]
        return f"trash:{share}/{undo.trash}"
    if undo.snapshot_id:
        return f"snapshot:{undo.snapshot_id}"
    return None


class Retention:
    def __init__(
        self,
        *,
        db: Database,
        files: FileOps,
        snapshots: SnapshotStore,
        audit: AuditLog,
        settings: RetentionSettings,
        state_dir: Path,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.files = files
        self.snapshots = snapshots
        self.audit = audit
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.now = now
        # One purge at a time. Taken before the file actions' lock (a purge
        # removes through them), never while holding it: the actions call
        # admit() and keep() under their lock, and those take none of ours.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        db.ensure(SCHEMA)

    # -- the budget ------------------------------------------------------------

    @property
    def budget_bytes(self) -> int:
        if self.settings.budget_bytes:
            return self.settings.budget_bytes
        st = os.statvfs(self.state_dir)
        return int(st.f_blocks * st.f_frsize * self.settings.budget_share)

    def used_bytes(self) -> int:
        row = self.db.one(
            "SELECT COALESCE(SUM(bytes), 0) AS n FROM retained WHERE status IN (?, ?)",
            (Held.kept, Held.purging),
        )
        return int(row["n"]) if row else 0

    def admit(self, size: int, what: str) -> None:
        """Refuse ``what`` before it changes anything if keeping ``size`` more
        bytes would go over the budget."""
        # No lock of ours here: the file actions call this under their own
        # (one action at a time), and a purge running meanwhile only frees.
        used, budget = self.used_bytes(), self.budget_bytes
        if used + size <= budget:
            return
        oldest = self.db.one(
            "SELECT MIN(created) AS t FROM retained WHERE status = ?", (Held.kept,)
        )
        frees = (
            f"; the oldest item is purged on {_iso(oldest['t'] + self.settings.days * DAY_S)}"
            if oldest and oldest["t"] is not None
            else ""
        )
        raise InsufficientStorage(
            f"{what} is refused: the trash and snapshots would hold {used + size} bytes, over "
            f"the retention budget of {budget} bytes ({used} held now){frees}. Nothing was "
            "changed. Empty the trash with `appliance retention purge`, or raise "
            "[retention] budget_bytes.",
            code="retention_budget",
        )

    def keep(self, action_id: str | None, kept: Kept) -> None:
        """Record ``kept`` (before the action changes anything)."""
        self.db.execute(
            "INSERT OR REPLACE INTO retained (key, action_id, source, bytes, created, status)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (kept.key, action_id, kept.source, kept.size, self.now(), Held.kept),
        )

    def release(self, action_id: str, reason: str) -> None:
        """What ``action_id`` kept is not needed (it did not take effect)."""
        self.db.execute(
            "UPDATE retained SET status = ?, ended = ?, reason = ? WHERE action_id = ? "
            "AND status = ?",
            (Held.released, self.now(), reason, action_id, Held.kept),
        )

    def restored(self, undo: UndoRecord) -> None:
        """An undo put back what ``undo`` names: it no longer counts. A trash
        item is back in the share; a snapshot is removed at the next purge."""
        key = key_of(undo)
        if key is not None:
            self.db.execute(
                "UPDATE retained SET status = ?, ended = ?, reason = ? WHERE key = ? "
                "AND status = ?",
                (Held.released, self.now(), "restored by an undo", key, Held.kept),
            )

    def check_undo(self, undo: UndoRecord) -> None:
        """Refuse (410) an undo whose kept item was purged, saying when and why."""
        key = key_of(undo)
        row = self.db.one("SELECT * FROM retained WHERE key = ?", (key,)) if key else None
        if row is not None and row["status"] in (Held.purged, Held.purging):
            when = f"on {_iso(row['ended'])}" if row["ended"] else "just now"
            raise ExecutionError(
                f"this cannot be undone any more: what it kept of {row['source']} (kept since "
                f"{_iso(row['created'])}) was purged {when}: {row['reason']}",
                code="purged",
                status=410,
            )

    # -- purging -----------------------------------------------------------------

    def purge_expired(self) -> list[dict[str, Any]]:
        """Purge what is older than the retention days; returns what went."""
        cutoff = self.now() - self.settings.days * DAY_S
        reason = f"kept {self.settings.days:g} days (retention)"
        return self._purge_where("status = ? AND created < ?", (Held.kept, cutoff), reason)

    def purge(self, *, older_than_s: float = 0.0) -> list[dict[str, Any]]:
        """The owner empties the trash (of items older than ``older_than_s``)."""
        cutoff = self.now() - older_than_s
        return self._purge_where(
            "status = ? AND created <= ?", (Held.kept, cutoff), "emptied by the owner"
        )

    def _purge_where(self, where: str, args: tuple[Any, ...], reason: str) -> list[dict[str, Any]]:
        with self._lock:
            if self.audit.closed:
                return []  # nothing is removed that could not be recorded
            rows = self.db.all(f"SELECT * FROM retained WHERE {where} ORDER BY created", args)
            # Snapshots an undo restored, and purges a crash interrupted.
            rows += self.db.all(
                "SELECT * FROM retained WHERE (status = ? AND key LIKE 'snapshot:%') "
                "OR status = ? ORDER BY created",
                (Held.released, Held.purging),
            )
            done = [e for r in rows if (e := self._purge_one(dict(r), reason)) is not None]
            if any(d["key"].startswith("snapshot:") for d in done):
                self.files.collect_snapshot_garbage()
            return done

    def _purge_one(self, row: dict[str, Any], reason: str) -> dict[str, Any] | None:
        if row["status"] == Held.released:
            reason = "its undo restored it; the snapshot is not needed"
        elif row["status"] == Held.purging:
            reason = row["reason"] or reason
        self.db.execute(
            "UPDATE retained SET status = ?, reason = ? WHERE key = ?",
            (Held.purging, reason, row["key"]),
        )
        kind, _, where = row["key"].partition(":")
        try:
            if kind == "trash":
                share, _, item = where.partition("/")
                removed = self.files.purge_trash_item(share, item, None)
            else:
                removed = self.snapshots.remove(where)
        except (ApplianceError, OSError) as e:
            # Left marked: tried again at the next pass; its undo is refused meanwhile.
            log.error("could not purge %s: %s", row["key"], getattr(e, "reason", e))
            return None
        entry = {
            "key": row["key"],
            "action_id": row["action_id"],
            "source": row["source"],
            "bytes": row["bytes"],
            "kept_since": _iso(row["created"]),
            "reason": reason,
            "removed": removed,
        }
        self.audit.append("retention.purged", entry)
        self.db.execute(
            "UPDATE retained SET status = ?, ended = ? WHERE key = ?",
            (Held.purged, self.now(), row["key"]),
        )
        log.info("purged %s (%s): %s", row["key"], row["source"], reason)
        return entry

    def adopt(self) -> int:
        """Snapshots earlier versions stored (for moves, deletes and undos)
        have no record here: record them, kept since they were saved, so the
        same days and budget apply to them."""
        known = {
            r["key"] for r in self.db.all("SELECT key FROM retained WHERE key LIKE 'snapshot:%'")
        }
        adopted = 0
        for sid in self.snapshots.snapshot_ids():
            if f"snapshot:{sid}" in known:
                continue
            try:
                manifest = self.snapshots.load(sid)
                size = sum(int(f["size"]) for f in manifest["files"])
                source = str(manifest.get("source", ""))
                saved = self.snapshots.saved_at(sid)
            except (SnapshotError, OSError, KeyError, TypeError, ValueError):
                continue  # a damaged manifest stays as evidence; nothing to restore from it
            self.db.execute(
                "INSERT OR IGNORE INTO retained (key, action_id, source, bytes, created, status)"
                " VALUES (?, NULL, ?, ?, ?, ?)",
                (f"snapshot:{sid}", source, size, saved, Held.kept),
            )
            adopted += 1
        return adopted

    # -- running ---------------------------------------------------------------

    def start(self) -> None:
        """Adopt earlier snapshots, finish interrupted purges, purge what
        expired, then keep doing so every ``purge_interval_s``."""
        self.adopt()
        self._run_once()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def _run_once(self) -> None:
        try:
            self.purge_expired()
        except ApplianceError as e:
            log.error("retention purge failed: %s", e.reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.purge_interval_s):
            self._run_once()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout=5)

    def status(self) -> dict[str, Any]:
        """What ``appliance status`` shows of retention."""
        counts = {
            r["status"]: (r["n"], r["b"])
            for r in self.db.all(
                "SELECT status, COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM retained "
                "GROUP BY status"
            )
        }
        oldest = self.db.one(
            "SELECT MIN(created) AS t FROM retained WHERE status = ?", (Held.kept,)
        )
        kept_n, kept_b = counts.get(Held.kept, (0, 0))
        return {
            "days": self.settings.days,
            "budget_bytes": self.budget_bytes,
            "used_bytes": kept_b + counts.get(Held.purging, (0, 0))[1],
            "items": kept_n,
            "oldest": _iso(oldest["t"]) if oldest and oldest["t"] is not None else None,
            "next_purge": (
                _iso(oldest["t"] + self.settings.days * DAY_S)
                if oldest and oldest["t"] is not None
                else None
            ),
            "purged": counts.get(Held.purged, (0, 0))[0],
        }
