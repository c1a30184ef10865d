"""Durable state in one SQLite database (WAL) under the state directory.

One connection shared by the broker's threads behind a lock: SQLite
serialises writers anyway, and one connection keeps transactions simple.
Each part creates its own tables with :meth:`Database.ensure`.

Durability: in WAL mode every commit survives a crash of the process (kill
-9). Surviving a power cut as well costs an fsync per commit, so only
transactions opened with ``tx(durable=True)`` (the default: spent tokens,
revocations, credentials) pay it; bookkeeping such as a plan's status uses
``synchronous=NORMAL`` and leans on the audit log, which is always fsync'd.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Database:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
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
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            finally:
                if durable:
                    self._conn.execute("PRAGMA synchronous=NORMAL")

    def execute(self, sql: str, args: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, args)

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
