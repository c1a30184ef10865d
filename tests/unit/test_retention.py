"""Retention through the whole broker: what deletes keep is counted against a
budget (an action over it is refused before anything changes), purged after
the configured days with an audit entry each, and an undo of a purged
action says why it cannot be done; snapshots of earlier versions are
adopted; the owner can empty the trash; ``appliance status`` shows it all."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.audit import verify_log
from appliance.broker.control import control_handler
from appliance.broker.files import TRASH_DIR
from appliance.broker.snapshots import SnapshotStore
from tests.unit.files_box import DAY, Box, Clock


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    (root / "Inbox").mkdir(parents=True)
    (root / "Inbox" / "a.pdf").write_bytes(b"%PDF a")  # 6 bytes
    (root / "Inbox" / "b.pdf").write_bytes(b"%PDF bb")  # 7 bytes
    (root / "Inbox" / "c.pdf").write_bytes(b"%PDF ccc")  # 8 bytes
    return root


@pytest.fixture
def box(tmp_path: Path, share: Path) -> Iterator[Box]:
    b = Box(tmp_path, share, Clock(), budget_bytes=1000)
    yield b
    b.close()


def error_of(plan: dict) -> dict:
    (intent,) = plan["intents"]
    return intent["result"]["error"]


def test_deletes_are_kept_within_the_budget_and_the_next_is_refused_first(
    tmp_path: Path, share: Path
) -> None:
    box = Box(tmp_path, share, Clock(), budget_bytes=16)
    try:
        budget_refusals(box, share)
    finally:
        box.close()


def budget_refusals(box: Box, share: Path) -> None:
    a = box.run("file.delete", "share:docs/Inbox/a.pdf")
    b = box.run("file.delete", "share:docs/Inbox/b.pdf")
    assert a["status"] == b["status"] == "done"
    status = box.broker.status()["retention"]
    assert (status["items"], status["used_bytes"], status["budget_bytes"]) == (2, 13, 16)
    # 8 more bytes would make 21 of 16: refused before anything changes.
    r = box.http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.delete", "resource": "share:docs/Inbox/c.pdf"}]},
    )
    assert box.approve()
    plan = box.wait(r.json()["plan_id"])
    assert plan["status"] == "failed"
    error = error_of(plan)
    assert error["code"] == "retention_budget"
    assert "over the retention budget of 16 bytes" in error["reason"]
    assert "appliance retention purge" in error["reason"]
    assert (share / "Inbox" / "c.pdf").read_bytes() == b"%PDF ccc"
    assert len(os.listdir(share / TRASH_DIR)) == 2
    assert box.audit("action.failed")[-1]["data"]["error"]["code"] == "retention_budget"
    # A move keeps nothing, so it still runs at a full budget.
    move = box.run("file.move", "share:docs/Inbox/c.pdf", to="share:docs/c.pdf")
    assert move["status"] == "done"
    # Undoing a delete gives its room back.
    _, undo = box.undo(a["intents"][0]["action_id"])
    assert undo["status"] == "done" and (share / "Inbox" / "a.pdf").exists()
    assert box.broker.status()["retention"]["used_bytes"] == 7


def test_expired_items_are_purged_audited_and_their_undo_says_why(box: Box, share: Path) -> None:
    old = box.run("file.delete", "share:docs/Inbox/a.pdf")
    box.clock.forward(20 * DAY)
    new = box.run("file.delete", "share:docs/Inbox")
    box.clock.forward(11 * DAY)  # the first is 31 days old, the second 11
    purged = box.broker.retention.purge_expired()
    assert [p["source"] for p in purged] == ["share:docs/Inbox/a.pdf"]
    (entry,) = box.audit("retention.purged")
    data = entry["data"]
    assert data["action_id"] == old["intents"][0]["action_id"]
    assert data["bytes"] == 6 and data["removed"] is True
    assert data["reason"] == "kept 30 days (retention)"
    assert len(os.listdir(share / TRASH_DIR)) == 1  # the folder, still kept
    # The undo of the purged delete is refused at once, saying why and when.
    status, refused = box.undo(old["intents"][0]["action_id"])
    assert status == 410 and refused["code"] == "purged"
    assert "share:docs/Inbox/a.pdf" in refused["reason"] and "kept 30 days" in refused["reason"]
    # The other one is still undoable.
    _, undo = box.undo(new["intents"][0]["action_id"])
    assert undo["status"] == "done" and (share / "Inbox" / "b.pdf").exists()
    assert verify_log(box.broker.config.audit_dir, box.broker.signer.public_key_pem()).ok


def test_an_undo_asked_for_before_the_purge_is_refused_when_it_runs(box: Box, share: Path) -> None:
    """Never a restore from something an undo no longer points to: the
    executor checks again after the press."""
    plan = box.run("file.delete", "share:docs/Inbox/a.pdf")
    r = box.http.post(f"/v1/actions/{plan['intents'][0]['action_id']}/undo")
    assert r.status_code == 202
    box.clock.forward(31 * DAY)
    box.broker.retention.purge_expired()
    assert box.approve()
    undo = box.wait(r.json()["plan_id"])
    assert undo["status"] == "failed" and error_of(undo)["code"] == "purged"
    assert not (share / "Inbox" / "a.pdf").exists()


def test_the_owner_empties_the_trash_over_the_control_socket(box: Box, share: Path) -> None:
    box.run("file.delete", "share:docs/Inbox/a.pdf")
    box.clock.forward(2 * DAY)
    box.run("file.delete", "share:docs/Inbox/b.pdf")
    handle = control_handler(box.broker)
    out = handle({"op": "retention.purge", "older_than_days": 1})
    assert [p["source"] for p in out["purged"]] == ["share:docs/Inbox/a.pdf"]
    assert all(p["reason"] == "emptied by the owner" for p in out["purged"])
    out = handle({"op": "retention.purge"})
    assert out["retention"]["items"] == 0 and os.listdir(share / TRASH_DIR) == []
    assert len(box.audit("retention.purged")) == 2
    for bad in (-1, "x", True):
        with pytest.raises(Exception, match="number of days"):
            handle({"op": "retention.purge", "older_than_days": bad})


def test_status_shows_retention_and_the_disk(box: Box) -> None:
    box.run("file.delete", "share:docs/Inbox/a.pdf")
    status = box.broker.status()
    assert status["retention"]["days"] == 30 and status["retention"]["items"] == 1
    assert status["retention"]["oldest"] and status["retention"]["next_purge"]
    assert status["disk"]["free_bytes"] > 0 and status["disk"]["reserve_held"] is True
    assert (box.root / "state" / "reserve").stat().st_size == 16 << 20
    json.dumps(status)  # what `appliance status` prints


def test_the_default_budget_is_a_share_of_the_data_partition(tmp_path: Path, share: Path) -> None:
    b = Box(tmp_path, share, Clock(), budget_share=0.1)
    try:
        st = os.statvfs(tmp_path)
        assert b.broker.retention.budget_bytes == int(st.f_blocks * st.f_frsize * 0.1)
    finally:
        b.close()


def test_snapshots_of_earlier_versions_are_adopted_and_purged(tmp_path: Path, share: Path) -> None:
    """A state directory from before the trash holds snapshots of moves and
    deletes: they come under the same days and budget, oldest first."""
    store = SnapshotStore(tmp_path / "state" / "snapshots")
    sha = store.put_bytes(b"old content")
    manifest = {"version": 1, "kind": "file", "source": "share:docs/old.txt", "dirs": []}
    manifest["files"] = [{"path": "", "sha256": sha, "size": 11, "mode": 0o644, "mtime_ns": 1}]
    old = store.save(manifest)
    fresh = store.save({**manifest, "source": "share:docs/fresh.txt"})
    aged = time.time() - 40 * DAY
    os.utime(store.manifests / f"{old}.json", (aged, aged))
    b = Box(tmp_path, share, Clock(time.time()))
    try:
        (entry,) = b.audit("retention.purged")
        assert entry["data"]["key"] == f"snapshot:{old}"
        assert entry["data"]["action_id"] is None
        assert store.snapshot_ids() == [fresh] and store.has_blob(sha)  # still named
        assert b.broker.retention.status()["used_bytes"] == 11
        b.clock.forward(31 * DAY)
        b.broker.retention.purge_expired()
        assert store.snapshot_ids() == [] and not store.has_blob(sha)  # garbage collected
    finally:
        b.close()
