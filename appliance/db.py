"""Durable state in one SQLite database (WAL) under the state directory.

One connection shared by the broker's threads behind a lock: SQLite
serialises writers anyway, and one connection keeps transactions simple.
Each part creates its own tables with :meth:`Database.ensure`.

A full disk: a write that SQLite refuses for want of room ("database or
disk is full") calls ``on_full()`` (the broker gives back its reserve,
appliance/broker/storage.py); a single statement is then tried once more, a
transaction is refused with 507 (the next one has the room).

Durability: in WAL mode every commit survives a crash of the process (kill
-9). Surviving a power cut as well costs an fsync per commit, so only
transactions opened with ``tx(durable=True)`` (the default: spent tokens,
revocations, credentials) pay it; bookkeeping such as a plan's status uses
``synchronous=NORMAL`` and leans on the audit log, which is always fsync'd.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance.errors import InsufficientStorage


def _full(e: sqlite3.OperationalError) -> bool:
    return "full" in str(e)


class Database:
    def __init__(self, path: Path, *, on_full: Callable[[], bool] | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._on_full = on_full
        self._conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()

    def ensure(self, ddl: str) -> None:
        """Create tables and indexes (idempotent DDL, ``CREATE ... IF NOT EXISTS``)."""
        with self._lock:
            self._conn.executescript(ddl)

    @contextmanager
    def tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction: all of it lands, or none of it. ``durable``
        commits with an fsync, so it survives a power cut too."""
        with self._lock:
            if durable:
                self._conn.execute("PRAGMA synchronous=FULL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException as e:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    if isinstance(e, sqlite3.OperationalError) and _full(e):
                        if self._on_full is not None:
                            self._on_full()
                        raise InsufficientStorage(
                            "the box's data partition is full: nothing was recorded or changed",
                            code="disk_full",
                        ) from None
                    raise
            finally:
                if durable:
                    self._conn.execute("PRAGMA synchronous=NORMAL")

    def execute(self, sql: str, args: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._conn.execute(sql, args)
            except sqlite3.OperationalError as e:
                if not _full(e):
                    raise
                if self._on_full is None or not self._on_full():
                    raise InsufficientStorage(
                        "the box's data partition is full: nothing was recorded",
                        code="disk_full",
                    ) from None
            return self._conn.execute(sql, args)  # room was made: once more

    def one(self, sql: str, args: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    def all(self, sql: str, args: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def row_dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None
