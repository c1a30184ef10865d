"""kill -9 at every step of a move, a delete into the trash, an undo out of
the trash and a purge, through the whole broker: after the restart no file
is lost, every file has exactly one name, and the undo still works or says
why not.

The kill is deterministic: every mutating file-system call a file action
makes (link, unlink, rename, renameat2, mkdir, rmdir, fsync, ...) is counted
while the action runs, and the n-th raises an exception nothing in the
broker catches, on the plan's own thread, for n = 0, 1, 2 ... until the
action runs to its end. The broker is then left as a kill leaves it (no
orderly shutdown) and opened again on the same state directory."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.broker.files import TRASH_DIR, base, deleting, moving
from tests.unit.files_box import DAY, Box, Clock

PATCHED = ("link", "unlink", "rename", "replace", "rmdir", "mkdir", "fsync", "utime", "fchmod")


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the broker catches it."""


class Killer:
    """Counts the mutating calls of file actions (only while one runs) and
    kills at the n-th: that call and every later one raise."""

    def __init__(self, at: int | None):
        self.at, self.count, self.dead = at, 0, False
        self.inside = threading.local()

    def counting(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any, **kw: Any) -> Any:
            if getattr(self.inside, "on", False):
                if self.dead or self.count == self.at:
                    self.dead = True
                    raise Killed(fn.__name__)
                self.count += 1
            return fn(*a, **kw)

        return call

    def around(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any, **kw: Any) -> Any:
            self.inside.on = True
            try:
                return method(*a, **kw)
            finally:
                self.inside.on = False

        return call


@pytest.fixture
def patch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Box, Killer], None]]:
    # A thread that dies by the kill should not be reported as a test failure.
    hook = threading.excepthook
    monkeypatch.setattr(
        threading,
        "excepthook",
        lambda args: None if isinstance(args.exc_value, Killed) else hook(args),
    )

    def arm(box: Box, killer: Killer) -> None:
        for name in PATCHED:
            monkeypatch.setattr(os, name, killer.counting(getattr(os, name)))
        for mod in (moving, deleting, base):
            monkeypatch.setattr(
                mod, "renameat2_noreplace", killer.counting(mod.renameat2_noreplace)
            )
        files = box.broker.files
        for method in ("execute", "undo", "purge_trash_item"):
            monkeypatch.setattr(files, method, killer.around(getattr(files, method)))

    yield arm
    monkeypatch.undo()


def make_share(root: Path) -> Path:
    share = root / "share"
    (share / "Inbox" / "deep").mkdir(parents=True)
    (share / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    (share / "Inbox" / "deep" / "b.txt").write_bytes(b"bee")
    (share / "Archive").mkdir()
    return share


def where(share: Path, data: bytes) -> list[str]:
    """Every name (the trash included) holding exactly ``data``."""
    return sorted(
        str(p.relative_to(share))
        for p in share.rglob("*")
        if p.is_file() and p.read_bytes() == data
    )


MOVES = [
    ("move a file", "share:docs/Inbox/a.pdf", "share:docs/Archive/a.pdf"),
    ("move a folder", "share:docs/Inbox", "share:docs/Archive/Inbox"),
]


def run_killed(
    tmp_path: Path, arm: Callable[[Box, Killer], None], at: int | None, path: str, body: Any = None
) -> tuple[Box, Killer, str]:
    share = make_share(tmp_path)
    box = Box(tmp_path, share, Clock())
    killer = Killer(at)
    arm(box, killer)
    plan_id = box.run_until_killed(path, body)
    return box, killer, plan_id


def each_kill_point(
    tmp_path: Path,
    arm: Callable[[Box, Killer], None],
    check: Callable[[Box, str, bool], None],
    path: str,
    body: Any = None,
    setup: Callable[[Box], str] | None = None,
) -> int:
    """Run the action killed at call 0, 1, 2 ... until it runs through; after
    each kill, restart and ``check(box, plan_id, killed)``. Returns how many
    kill points there were."""
    n = 0
    while True:
        root = tmp_path / f"kill{n}"
        share = make_share(root)
        box = Box(root, share, Clock())
        action_path = setup(box) if setup else path
        killer = Killer(n)
        arm(box, killer)
        plan_id = box.run_until_killed(action_path, body)
        if not killer.dead:
            killer.at = None  # ran through: nothing more is killed
            check(box, plan_id, False)
            box.close()
            return n
        box.kill()
        box.restart()
        try:
            check(box, plan_id, True)
        finally:
            box.close()
        n += 1
        assert n < 60, "the action never ran through"


@pytest.mark.parametrize(("name", "src", "dest"), MOVES, ids=[m[0] for m in MOVES])
def test_kill_during_a_move(tmp_path: Path, patch: Any, name: str, src: str, dest: str) -> None:
    def check(box: Box, plan_id: str, killed: bool) -> None:
        for data in (b"%PDF a", b"bee"):
            assert len(where(box.share, data)) == 1, (name, where(box.share, data))
        (intent,) = box.http.get(f"/v1/plans/{plan_id}").json()["intents"]
        moved = not (box.share / "Inbox" / "a.pdf").exists()
        assert intent["status"] == ("done" if moved else "interrupted"), intent
        if moved:  # it took effect: the undo moves it back
            status, undo = box.undo(intent["action_id"])
            assert undo["status"] == "done", undo
        assert where(box.share, b"%PDF a") == ["Inbox/a.pdf"]
        assert box.broker.parts.snapshots.snapshot_ids() == []  # a move keeps nothing

    body = {"intents": [{"verb": "file.move", "resource": src, "params": {"to": dest}}]}
    points = each_kill_point(tmp_path, patch, check, "/v1/intents", body)
    assert points >= 2


@pytest.mark.parametrize("what", ["share:docs/Inbox/a.pdf", "share:docs/Inbox"])
def test_kill_during_a_delete_into_the_trash(tmp_path: Path, patch: Any, what: str) -> None:
    def check(box: Box, plan_id: str, killed: bool) -> None:
        places = where(box.share, b"%PDF a")
        assert len(places) == 1 and len(where(box.share, b"bee")) == 1, places
        (intent,) = box.http.get(f"/v1/plans/{plan_id}").json()["intents"]
        gone = places[0].startswith(TRASH_DIR)
        assert intent["status"] == ("done" if gone else "interrupted"), intent
        status = box.broker.retention.status()
        assert status["items"] == (1 if gone else 0), status  # released if it did not happen
        if gone:
            _, undo = box.undo(intent["action_id"])
            assert undo["status"] == "done", undo
        assert where(box.share, b"%PDF a") == ["Inbox/a.pdf"]

    body = {"intents": [{"verb": "file.delete", "resource": what}]}
    assert each_kill_point(tmp_path, patch, check, "/v1/intents", body) >= 2


def test_kill_during_an_undo_out_of_the_trash(tmp_path: Path, patch: Any) -> None:
    deleted: dict[str, str] = {}

    def setup(box: Box) -> str:
        plan = box.run("file.delete", "share:docs/Inbox/a.pdf")
        deleted["action"] = plan["intents"][0]["action_id"]
        return f"/v1/actions/{deleted['action']}/undo"

    def check(box: Box, plan_id: str, killed: bool) -> None:
        places = where(box.share, b"%PDF a")
        assert len(places) == 1, places
        if places == ["Inbox/a.pdf"]:
            return  # the undo took effect
        # Still in the trash: the undo can be asked for again, and works.
        assert places[0].startswith(TRASH_DIR)
        _, undo = box.undo(deleted["action"])
        assert undo["status"] == "done", undo
        assert where(box.share, b"%PDF a") == ["Inbox/a.pdf"]

    assert each_kill_point(tmp_path, patch, check, "", setup=setup) >= 1


def test_kill_during_a_purge(tmp_path: Path, patch: Any) -> None:
    """A purge is marked before the item goes and audited after: a kill in
    between is finished, and audited, at the next start; the undo says why."""
    n = 0
    while True:
        root = tmp_path / f"kill{n}"
        box = Box(root, make_share(root), Clock())
        plan = box.run("file.delete", "share:docs/Inbox")
        action_id = plan["intents"][0]["action_id"]
        killer = Killer(n)
        patch(box, killer)
        box.clock.forward(31 * DAY)
        try:
            purged = box.broker.retention.purge_expired()
        except Killed:
            purged = []
        if killer.dead:
            box.kill()
            box.restart()  # the start finishes the purge
        else:
            killer.at = None
            assert [p["source"] for p in purged] == ["share:docs/Inbox"]
        try:
            assert where(box.share, b"%PDF a") == [] and where(box.share, b"bee") == []
            assert os.listdir(box.share / TRASH_DIR) == []
            entries = box.audit("retention.purged")
            assert entries and entries[-1]["data"]["source"] == "share:docs/Inbox"
            status, refused = box.undo(action_id)
            assert status == 410 and "purged" in refused["reason"], refused
        finally:
            box.close()
        if not killer.dead:
            break
        n += 1
        assert n < 30
    assert n >= 2
