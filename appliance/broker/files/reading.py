"""The verbs that only read: list, stat, read."""

from __future__ import annotations

import base64
import os
import stat
from typing import Any

from appliance.broker.files.base import FileActions, Outcome, handles
from appliance.broker.scope import (
    Target,
    kind_of,
    lstat_at,
    name_ok,
    open_regular,
)
from appliance.errors import ExecutionError
from appliance.intents import MAX_COUNT


class Reading(FileActions):
    @handles("file.list")
    def _list(self, target: Target, params: dict[str, Any]) -> Outcome:
        with self.shares.open_dir(target) as fd:
            names = os.listdir(fd)
            ok = sorted(n for n in names if name_ok(n, self.limits))
            skipped = len(names) - len(ok)
            truncated = len(ok) > self.limits.list_entries
            entries = []
            for name in ok[: self.limits.list_entries]:
                st = lstat_at(fd, name)
                if st is None:
                    continue  # removed while listing
                kind = kind_of(st.st_mode)
                entries.append(
                    {
                        "name": name,
                        "type": kind,
                        "size": st.st_size if kind == "file" else 0,
                        "mtime": st.st_mtime,
                    }
                )
        result = {
            "resource": target.canonical,
            "entries": entries,
            "truncated": truncated,
            # Names that cannot be addressed (control characters, not UTF-8,
            # reserved broker names) are counted, not shown.
            "skipped": skipped,
        }
        return Outcome(result)

    @handles("file.stat")
    def _stat(self, target: Target, params: dict[str, Any]) -> Outcome:
        st: os.stat_result | None
        if target.is_root:
            with self.shares.open_dir(target) as fd:
                st = os.fstat(fd)
        else:
            with self.shares.open_parent(target) as (fd, name):
                st = lstat_at(fd, name)
        if st is None:
            raise ExecutionError(f"{target.canonical} does not exist")
        kind = kind_of(st.st_mode)
        return Outcome(
            {
                "resource": target.canonical,
                "type": kind,
                "size": st.st_size if kind == "file" else 0,
                "mtime": st.st_mtime,
                "mode": stat.S_IMODE(st.st_mode),
            }
        )

    @handles("file.read")
    def _read(self, target: Target, params: dict[str, Any]) -> Outcome:
        max_bytes = params.get("max_bytes", self.limits.read_bytes)
        offset = params.get("offset", 0)
        for key, value in (("max_bytes", max_bytes), ("offset", offset)):
            # Bounded above too: an offset past 2**63 is no file position at all.
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise ExecutionError(
                    f"params.{key} must be a non-negative integer, at most {MAX_COUNT}"
                )
        max_bytes = min(max_bytes, self.limits.read_bytes)
        with self.shares.open_parent(target) as (dfd, name):
            fd = open_regular(dfd, name, target.canonical)
        try:
            size = os.fstat(fd).st_size
            data = b""
            while len(data) < max_bytes:
                chunk = os.pread(fd, max_bytes - len(data), offset + len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        try:
            content, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode("ascii"), "base64"
        return Outcome(
            {
                "resource": target.canonical,
                "content": content,
                "encoding": encoding,
                "size": size,
                "offset": offset,
                "length": len(data),
                "truncated": offset + len(data) < size,
            }
        )
