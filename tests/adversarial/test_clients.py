"""A malicious paired desktop and an unpaired device against the others: each
attack is tried and the promise it attacks is checked (nothing read outside
a grant, nothing of another desktop seen or undone, no credential stolen),
not just the status code."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.broker.executor import claims
from appliance.errors import ExecutionError
from tests.adversarial.desks import Box, open_test_box

WRITE = {
    "intents": [{"verb": "file.write", "resource": "share:docs/v.txt", "params": {"content": "v"}}]
}
MOVE = {
    "intents": [
        {
            "verb": "file.move",
            "resource": "share:docs/Inbox/a.pdf",
            "params": {"to": "share:docs/a.pdf"},
        }
    ]
}


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    yield from open_test_box(tmp_path)


@pytest.fixture
def victim_done(box: Box) -> dict:
    """The victim desktop moved a file (done, undoable) and has a write waiting;
    an attacker (read and change docs) and an auditor (audit grant only) are
    paired too."""
    box.pair("attacker")
    box.pair("auditor", {"shares": {}, "audit": True})
    victim = box.pair("victim")
    moved = victim.post("/v1/intents", json=MOVE).json()
    assert box.press()
    moved = box.wait(victim, moved["plan_id"])
    assert moved["status"] == "done"
    waiting = victim.post("/v1/intents", json=WRITE).json()
    assert waiting["status"] == "pending_approval"
    task = victim.post("/v1/tasks", json={"text": "list my files"}).json()
    return {"moved": moved, "waiting": waiting, "task": task}


# ---------------------------------------------------------------- another desktop's records
def test_another_desktops_plans_actions_and_tasks_answer_as_if_absent(
    box: Box, victim_done: dict
) -> None:
    attacker = box.desks["attacker"]
    plan_id = victim_done["moved"]["plan_id"]
    action_id = victim_done["moved"]["intents"][0]["action_id"]
    task_id = victim_done["task"]["task_id"]
    absent = attacker.get("/v1/plans/plan_0000000000000000")
    for path in (
        f"/v1/plans/{plan_id}",
        f"/v1/actions/{action_id}",
        f"/v1/tasks/{task_id}",
        f"/v1/tasks/{task_id}/events",
    ):
        r = attacker.get(path)
        # The same answer as for a plan that never was: nothing but the id it asked.
        assert r.status_code == 404 and r.json()["code"] == absent.json()["code"], path
        assert "Inbox" not in r.text and "victim" not in r.text
        assert box.client_id("victim") not in r.text
    # The victim still sees its own.
    assert box.desks["victim"].get(f"/v1/plans/{plan_id}").status_code == 200


def test_another_desktops_approvals_are_not_listed_or_readable(box: Box, victim_done: dict) -> None:
    attacker = box.desks["attacker"]
    approval_id = victim_done["waiting"]["approval_id"]
    listed = attacker.get("/v1/approvals").json()["approvals"]
    assert all(a["approval_id"] != approval_id for a in listed)
    assert attacker.get(f"/v1/approvals/{approval_id}").status_code == 404
    assert box.desks["victim"].get(f"/v1/approvals/{approval_id}").status_code == 200


def test_the_audit_log_shows_a_desktop_only_what_is_about_it(box: Box, victim_done: dict) -> None:
    attacker = box.desks["attacker"]
    victim_id = box.client_id("victim")
    entries = attacker.get("/v1/audit", params={"limit": 1000}).json()["entries"]
    text = json.dumps(entries)
    assert victim_id not in text and victim_done["moved"]["plan_id"] not in text
    assert "Inbox/a.pdf" not in text
    mine = box.client_id("attacker")
    assert any(e["data"].get("client_id") == mine for e in entries)  # its own pairing


def test_an_audit_grant_sees_everyone_and_changes_nothing(box: Box, victim_done: dict) -> None:
    auditor = box.desks["auditor"]
    plan_id = victim_done["moved"]["plan_id"]
    assert auditor.get(f"/v1/plans/{plan_id}").status_code == 200
    text = json.dumps(auditor.get("/v1/audit", params={"limit": 1000}).json()["entries"])
    assert plan_id in text
    # Reading everyone's history is not a licence to touch anything.
    r = auditor.post(
        "/v1/intents", json={"intents": [{"verb": "file.list", "resource": "share:docs/"}]}
    )
    assert r.status_code == 403
    action_id = victim_done["moved"]["intents"][0]["action_id"]
    assert auditor.post(f"/v1/actions/{action_id}/undo").status_code == 404


def test_another_desktops_action_cannot_be_undone(box: Box, victim_done: dict) -> None:
    attacker = box.desks["attacker"]
    action_id = victim_done["moved"]["intents"][0]["action_id"]
    plan_id = victim_done["moved"]["plan_id"]
    assert attacker.post(f"/v1/actions/{action_id}/undo").status_code == 404
    assert attacker.post(f"/v1/plans/{plan_id}/undo").status_code == 404
    # Nothing reached the panel for it: the only request shown is the victim's write.
    shown = box.broker.approvals.current()
    assert shown is not None and shown.approval_id == victim_done["waiting"]["approval_id"]
    assert (box.docs / "a.pdf").exists() and not (box.docs / "Inbox" / "a.pdf").exists()


# ---------------------------------------------------------------- grants
def test_a_read_only_grant_never_changes_its_share(box: Box) -> None:
    reader = box.pair("reader", {"shares": {"docs": "read"}})
    for intent in (
        WRITE["intents"][0],
        MOVE["intents"][0],
        {
            "verb": "file.copy",
            "resource": "share:docs/secret.txt",
            "params": {"to": "share:docs/c.txt"},
        },
        {"verb": "file.delete", "resource": "share:docs/secret.txt"},
    ):
        r = reader.post("/v1/intents", json={"intents": [intent]})
        assert r.status_code == 403, r.text
        assert "grant" in r.json()["intents"][0]["reasons"][0]
    assert box.broker.approvals.current() is None  # nothing even asked for a press
    assert sorted(p.name for p in box.docs.iterdir()) == ["Inbox", "secret.txt"]
    ok = reader.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.read", "resource": "share:docs/secret.txt"}]},
    )
    assert ok.status_code == 200 and ok.json()["intents"][0]["result"]["content"]


def test_a_share_outside_the_grant_is_not_read_nor_copied_out_of(box: Box) -> None:
    photos = box.pair("photos-only", {"shares": {"photos": "read-write"}})
    r = photos.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.read", "resource": "share:docs/secret.txt"}]},
    )
    assert r.status_code == 403 and "secret" not in json.dumps(r.json()["intents"][0].get("result"))
    copy = {
        "verb": "file.copy",
        "resource": "share:docs/secret.txt",
        "params": {"to": "share:photos/s.txt"},
    }
    assert photos.post("/v1/intents", json={"intents": [copy]}).status_code == 403
    assert not (box.photos / "s.txt").exists()
    listing = photos.post(
        "/v1/intents", json={"intents": [{"verb": "file.list", "resource": "share:docs/"}]}
    )
    assert listing.status_code == 403 and "secret.txt" not in listing.text


def test_an_ended_pairing_is_refused(box: Box) -> None:
    desk = box.pair("weekend", {"shares": {"docs": "read"}, "expires_in_s": 3600})
    client_id = box.client_id("weekend")
    assert desk.get("/v1/approvals").status_code == 200
    grant = json.dumps({"shares": {"docs": "read"}, "expires": time.time() - 1})
    box.broker.db.execute(
        "UPDATE clients SET grant_json = ? WHERE client_id = ?", (grant, client_id)
    )
    r = desk.get("/v1/approvals")
    assert r.status_code == 401 and r.json()["code"] == "grant_expired"


# ---------------------------------------------------------------- pairing
def test_a_paired_desktop_cannot_take_a_new_desktops_credential(box: Box) -> None:
    attacker = box.pair("attacker")
    newcomer = box.anon("10.0.0.7")
    started = newcomer.post("/v1/pairings", json={"name": "new laptop"}).json()
    secret = started["pairing_id"]
    # What the attacker can see of it: neither the approval nor the secret.
    assert secret not in attacker.get("/v1/approvals").text
    assert secret not in attacker.get("/v1/audit", params={"limit": 1000}).text
    assert secret not in json.dumps(box.broker.audit.entries(0, 100_000))
    assert box.press()
    # Guessing with the public reference the panel shows gets nothing.
    assert attacker.get(f"/v1/pairings/{started['pairing']}").status_code == 404
    got = newcomer.get(f"/v1/pairings/{secret}").json()
    assert "credential" in got
    assert newcomer.get(f"/v1/pairings/{secret}").status_code == 410  # exactly once


def test_the_press_approves_the_grant_the_panel_showed(box: Box) -> None:
    http = box.anon()
    asked = {"shares": {"docs": "read", "photos": "read-write"}, "audit": True}
    started = http.post("/v1/pairings", json={"name": "desk", "grant": asked}).json()
    shown = box.broker.approvals.current()
    assert shown is not None
    assert "read and change photos" in shown.summary and "read docs" in shown.summary
    assert "everyone's history" in shown.summary
    assert box.press()
    cred = http.get(f"/v1/pairings/{started['pairing_id']}").json()
    assert cred["grant"]["shares"] == {"docs": "read", "photos": "read-write"}


@pytest.mark.parametrize(
    ("grant", "status", "problem"),
    [
        ({"shares": {"etc": "read"}}, 404, "no share 'etc'"),
        ({"shares": {"docs": "admin"}}, 422, "grant.shares.docs: Input should be 'read' or"),
        ({"owner": True}, 422, "grant.owner"),
        ({"expires_in_s": 5}, 422, "grant.expires_in_s: Input should be greater than or equal"),
        ({"audit": "yes"}, 422, "grant.audit: Input should be a valid boolean"),
        ({"shares": ["docs"]}, 422, "grant.shares: Input should be a valid dictionary"),
        ("everything", 422, "grant: Input should be a valid dictionary"),
    ],
)
def test_a_grant_that_cannot_be_given_is_refused_before_the_panel(
    box: Box, grant: object, status: int, problem: str
) -> None:
    r = box.anon().post("/v1/pairings", json={"name": "desk", "grant": grant})
    assert r.status_code == status and problem in r.json()["reason"], r.text
    assert box.broker.approvals.current() is None


@pytest.mark.parametrize("name", ["evil\u202etxt.exe", "zero\u200bwidth", "bell\x07", "c1\x85x"])
def test_a_name_that_would_not_show_as_itself_is_refused(box: Box, name: str) -> None:
    r = box.anon().post("/v1/pairings", json={"name": name})
    assert r.status_code == 422 and "U+" in r.json()["reason"], r.text
    assert box.broker.approvals.current() is None


def test_pairing_requests_cannot_crowd_out_a_paired_desktop(box: Box) -> None:
    desk = box.pair("desk")
    holder = box.desks["desk"]
    first = holder.post("/v1/intents", json=WRITE).json()  # shown on the panel
    assert first["status"] == "pending_approval"
    # One address may ask once; the pairing line holds two.
    assert box.anon("10.0.0.1").post("/v1/pairings", json={"name": "a"}).status_code == 202
    assert box.anon("10.0.0.1").post("/v1/pairings", json={"name": "a2"}).status_code == 429
    assert box.anon("10.0.0.2").post("/v1/pairings", json={"name": "b"}).status_code == 202
    r = box.anon("10.0.0.3").post("/v1/pairings", json={"name": "c"})
    assert r.status_code == 429 and r.json()["code"] == "approval_queue_full"
    # The paired desktop's next request still gets in, and is shown before them.
    second = desk.post("/v1/intents", json=MOVE).json()
    assert second["status"] == "pending_approval"
    assert box.press("deny")
    shown = box.broker.approvals.current()
    assert shown is not None and shown.approval_id == second["approval_id"]


# ---------------------------------------------------------------- revoking
def test_revoking_a_desktop_withdraws_what_waits_and_a_later_press_does_nothing(
    box: Box, victim_done: dict
) -> None:
    waiting = victim_done["waiting"]
    box.broker.revoke_client(box.client_id("victim"))
    assert box.broker.approvals.get(waiting["approval_id"]).status == "cancelled"
    assert not box.press()  # nothing of it is left to press for
    assert not (box.docs / "v.txt").exists()
    assert box.desks["victim"].get("/v1/approvals").status_code == 401
    assert box.broker.plans.public(waiting["plan_id"])["status"] in ("expired", "denied")
    assert "client.revoked" in box.audit_kinds()


def test_an_approved_plan_of_a_revoked_desktop_never_runs(box: Box) -> None:
    """Revoked between the press and the run: the executor refuses it."""
    desk = box.pair("desk")
    plan = desk.post("/v1/intents", json=WRITE).json()
    row = box.broker.plans.plan_row(plan["plan_id"])
    assert row is not None and row.approval_id is not None
    request = box.broker.approvals.get(row.approval_id)
    box.broker.approvals.cancel(row.approval_id)
    receipt = box.broker.receipts.sign(dataclasses.replace(request, status="approved"))
    box.broker.revoke_client(box.client_id("desk"))
    action = box.broker.plans.actions(plan["plan_id"])[0]
    token = box.broker.tokens.mint(claims(row, action, receipt))
    with pytest.raises(ExecutionError) as e:
        box.broker.executor.execute(token, action.action_id)
    assert e.value.code == "requester_revoked"
    assert not (box.docs / "v.txt").exists() and box.broker.tokens.spent_count() == 0


# ---------------------------------------------------------------- unpaired
@pytest.mark.parametrize(
    "path", ["/v1/approvals", "/v1/audit", "/v1/plans/plan_1", "/v1/keys", "/v1/plugins"]
)
def test_an_unpaired_device_reads_nothing(box: Box, victim_done: dict, path: str) -> None:
    r = box.anon("10.9.9.9").get(path)
    assert r.status_code == 401 and victim_done["moved"]["plan_id"] not in r.text
