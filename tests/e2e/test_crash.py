"""kill -9 the broker in the middle of a plan, restart it: no file is lost,
the audit log verifies, spent tokens stay spent, and what ran is undoable."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tests.e2e.conftest import Box
from tests.e2e.test_inbox_sort import wait_plan

N = 250


def test_kill_mid_plan(box: Box) -> None:
    inbox = box.share / "Inbox"
    inbox.mkdir()
    contents = {f"f{i:04}.pdf": (f"%PDF {i} ".encode() * 4000) for i in range(N)}
    for name, data in contents.items():
        (inbox / name).write_bytes(data)
    (box.share / "Out").mkdir()
    # Not about trusted arming (tests/console/): the CLI's press may approve
    # 250 steps without the console showing them first; the box restarts
    # with the same settings.
    config = box.state.parent / "appliance.toml"
    config.write_text("[approvals]\nconsole_steps = 0\n")
    box.stop()
    box.extra += ["--config", str(config)]
    box.start()
    desk = box.pair("laptop")
    intents = [
        {
            "verb": "file.move",
            "resource": f"share:docs/Inbox/{n}",
            "params": {"to": f"share:docs/Out/{n}"},
        }
        for n in contents
    ]
    r = desk.post("/v1/intents", json={"intents": intents})
    assert r.status_code == 202, r.text
    plan_id = r.json()["plan_id"]
    box.press("approve")
    out = box.share / "Out"
    deadline = time.monotonic() + 60
    while len(list(out.iterdir())) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    box.stop(kill=True)
    moved = len(list(out.iterdir()))
    assert 0 < moved < N, f"the kill should land mid-plan ({moved} of {N} moved)"

    def places(name: str) -> list[Path]:
        found = [p for p in (inbox / name, out / name) if p.exists()]
        for p in found:
            assert p.read_bytes() == contents[name]
        return found

    # No file lost: each is whole at its source or its destination (a kill
    # between link and unlink may leave both names for a moment).
    assert all(places(name) for name in contents)

    box.start()
    # Restarting settles the interrupted move: each file in exactly one place.
    assert all(len(places(name)) == 1 for name in contents)
    box.cli("audit", "verify", "--state-dir", str(box.state))
    # The same desktop's credential outlives the restart; another desktop
    # would not be shown this plan at all.
    assert box.pair("someone-else").get(f"/v1/plans/{plan_id}").status_code == 404
    plan = desk.get(f"/v1/plans/{plan_id}").json()
    assert plan["status"] == "failed"
    statuses = {i["status"] for i in plan["intents"]}
    assert statuses <= {"done", "interrupted", "skipped"}

    # Every token the executor used before the crash is still spent.
    db = sqlite3.connect(box.state / "state.db")
    used = {
        row[0]
        for row in db.execute(
            "SELECT token_id FROM actions WHERE plan_id = ? AND token_id IS NOT NULL", (plan_id,)
        )
    }
    spent = {row[0] for row in db.execute("SELECT token_id FROM token_spent")}
    db.close()
    assert used and used <= spent

    # What ran can be undone: the moved files go back to the Inbox.
    r = desk.post(f"/v1/plans/{plan_id}/undo")
    assert r.status_code == 202, r.text
    box.press("approve")
    undo = wait_plan(desk, r.json()["plan_id"])
    assert undo["status"] == "done", undo
    # Every move that took effect, the interrupted one included, is undone.
    assert list(out.iterdir()) == []
    assert all(places(name) == [inbox / name] for name in contents)
    # The audit log names each action the kill caught mid-way (if it caught one).
    audit = desk.get("/v1/audit", params={"limit": 1000}).json()["entries"]
    caught = {e["data"]["action_id"] for e in audit if e["kind"] == "action.interrupted"}
    assert caught == {
        i["action_id"]
        for i in plan["intents"]
        if i["status"] == "interrupted" or "recovered" in (i["result"] or {})
    }
    box.cli("audit", "verify", "--state-dir", str(box.state))
