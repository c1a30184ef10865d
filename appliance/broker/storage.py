"""A full disk: fail closed for changes, keep serving reads and approvals.

Everything the broker records lives on the data partition (the state
directory): the audit log, the database, the snapshot store. When someone
fills that partition (a share user copying a film over the network, say),
nothing may be half-done and nothing lost, and the box should still answer
reads and show approvals, which need a few audit entries each.

So the broker keeps a *reserve*: a file of ``reserve_bytes`` allocated in
the state directory while there is room. Below ``low_free_bytes`` free, every
change is refused with 507 and a reason that says what to do; the reserve is
given back the moment the disk is found full (by this check, or by an audit
append or a database write that hits ENOSPC), which leaves room for the
entries of reads and approvals; and when space returns (the trash purged, a
file removed over the share) the reserve is taken again and changes run
again, without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from appliance.errors import InsufficientStorage

log = logging.getLogger("appliance.broker")

RESERVE_FILE = "reserve"


class Storage:
    def __init__(self, state_dir: Path, *, low_free_bytes: int, reserve_bytes: int) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / RESERVE_FILE
        self.low_free_bytes = low_free_bytes
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()
        self.refresh()

    def free(self) -> tuple[int, int]:
        """(free bytes, total bytes) of the state partition, as the broker's user sees it."""
        st = os.statvfs(self.state_dir)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    @property
    def held(self) -> bool:
        """The reserve is in place."""
        try:
            return self.path.stat().st_size >= self.reserve_bytes
        except FileNotFoundError:
            return False

    def release(self) -> bool:
        """Give the reserve back to the file system (the disk is full).
        Returns whether there was one to give."""
        with self._lock:
            try:
                size = self.path.stat().st_size
                self.path.unlink()
            except FileNotFoundError:
                return False
        log.warning("the data partition is full: released the %d byte reserve", size)
        return size > 0

    def room_for_records(self) -> None:
        """Before a plan is recorded: below ``low_free_bytes`` free, give the
        reserve back now, so a read's or an approval's few records find room
        (a database write cannot be tried again once it failed part-way)."""
        if self.held and self.free()[0] < self.low_free_bytes:
            self.release()

    def refresh(self) -> None:
        """Take the reserve again once there is room for it and to spare."""
        with self._lock:
            if self.held or not self.reserve_bytes:
                return
            free, _ = self.free()
            if free < self.low_free_bytes + self.reserve_bytes:
                return
            tmp = self.path.with_suffix(".tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.reserve_bytes)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            except OSError as e:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                log.warning("could not take the %d byte reserve: %s", self.reserve_bytes, e)

    def check_change(self, what: str) -> None:
        """Refuse a change (507) while the data partition is nearly full: less
        than ``low_free_bytes`` free with the reserve in place (given back
        now), or too little to take the reserve again."""
        self.refresh()
        free, _ = self.free()
        if free >= self.low_free_bytes and (
            self.held or free >= self.low_free_bytes + self.reserve_bytes
        ):
            return
        if free < self.low_free_bytes:
            self.release()
        raise InsufficientStorage(
            f"{what} is refused: the box's data partition is full ({free // (1 << 20)} MiB "
            f"free, {self.low_free_bytes // (1 << 20)} MiB needed for changes). Nothing was "
            "changed; reads and approvals go on. Free space by emptying the trash "
            "(`appliance retention purge`) or removing files over the share; changes "
            "resume by themselves.",
            code="disk_full",
        )

    def status(self) -> dict[str, Any]:
        free, total = self.free()
        return {
            "free_bytes": free,
            "total_bytes": total,
            "low": free < self.low_free_bytes,
            "reserve_held": self.held,
        }
