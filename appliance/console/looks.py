"""What the files a step touches look like now, for the review: sizes, a
folder's count of files, the text a file holds (for the diff an overwrite
would make). Read-only, bounded, and through the same ``O_NOFOLLOW`` walk
as every action (``broker.scope``): a look never follows a symlink and never
opens a special file.
"""

from __future__ import annotations

import difflib
import os
import stat
from typing import Any

from appliance.broker.scope import Shares, Target, lstat_at, open_regular, open_subdir
from appliance.errors import ApplianceError

TEXT_LOOK = 64 * 1024  # bytes of a current file read for its diff
TREE_LOOK = 10_000  # entries one review's folder counts visit at most, together
DIFF_LINES = 400  # lines of a diff shown


class Budget:
    """How many folder entries a review may still visit (one review's looks
    share it, so a plan of 256 folder moves costs no more than one)."""

    def __init__(self, entries: int = TREE_LOOK) -> None:
        self.left = entries


def look(shares: Shares, resource: str, budget: Budget | None = None) -> dict[str, Any]:
    """``{"kind": "file" | "dir" | "missing" | "refused", "bytes", "files", "partial"}``."""
    try:
        target = shares.parse(resource)
        st = shares.lookup(target)
    except ApplianceError as e:
        return {"kind": "refused", "reason": e.reason}
    if st is None:
        return {"kind": "missing"}
    if stat.S_ISREG(st.st_mode):
        return {"kind": "file", "bytes": st.st_size, "mtime": st.st_mtime}
    files, size, partial = _tree(shares, target, budget or Budget())
    return {"kind": "dir", "bytes": size, "files": files, "partial": partial}


def _tree(shares: Shares, target: Target, budget: Budget) -> tuple[int, int, bool]:
    """(files, bytes, cut short) below a folder, within the budget's entries."""
    files = size = 0
    partial = False
    try:
        with shares.open_dir(target) as root:
            stack = [os.dup(root)]
            try:
                while stack and not partial:
                    fd = stack.pop()
                    try:
                        for name in os.listdir(fd):
                            budget.left -= 1
                            if budget.left < 0:
                                partial = True
                                break
                            st = lstat_at(fd, name)
                            if st is None:
                                continue
                            if stat.S_ISREG(st.st_mode):
                                files += 1
                                size += st.st_size
                            elif stat.S_ISDIR(st.st_mode):
                                stack.append(open_subdir(fd, name, name))
                    finally:
                        os.close(fd)
            finally:
                for fd in stack:
                    os.close(fd)
    except (ApplianceError, OSError):
        return files, size, True
    return files, size, partial


def current_text(shares: Shares, resource: str) -> str | None:
    """The text a file holds now (its first TEXT_LOOK bytes), or None when it
    is not a readable regular text file."""
    try:
        target = shares.parse(resource)
        with shares.open_parent(target) as (parent, name):
            fd = open_regular(parent, name, target.canonical)
            try:
                data = os.read(fd, TEXT_LOOK)
            finally:
                os.close(fd)
    except (ApplianceError, OSError):
        return None
    if b"\0" in data:
        return None
    return data.decode("utf-8", "replace")


def diff(old: str, new: str, name: str) -> list[str]:
    """A unified diff of ``old`` to ``new`` (at most DIFF_LINES lines)."""
    lines = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), f"{name} (now)", f"{name} (after)", lineterm=""
        )
    )
    if len(lines) > DIFF_LINES:
        lines = lines[:DIFF_LINES] + [f"… {len(lines) - DIFF_LINES} more lines of the diff"]
    return lines
