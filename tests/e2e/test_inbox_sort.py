"""The story of issue 2, end to end, against the real server on loopback:
pair through the virtual panel, sort an Inbox's PDFs into year folders after
a press, verify the audit log, undo, and find the files back."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.e2e.conftest import Box

YEARS = {"invoice-a.pdf": 2021, "invoice-b.pdf": 2022, "letter.pdf": 2021, "scan.pdf": 2023}


def make_inbox(share: Path) -> dict[str, bytes]:
    inbox = share / "Inbox"
    inbox.mkdir()
    contents = {}
    for name, year in YEARS.items():
        data = f"%PDF-1.4 {name}".encode()
        (inbox / name).write_bytes(data)
        stamp = datetime(year, 6, 1, tzinfo=UTC).timestamp()
        os.utime(inbox / name, (stamp, stamp))
        contents[name] = data
    (inbox / "notes.txt").write_text("not a pdf")
    return contents


def wait_plan(desk: httpx.Client, plan_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        plan = desk.get(f"/v1/plans/{plan_id}", params={"wait": 10}).json()
        if plan["status"] in ("done", "denied", "failed", "expired"):
            return plan
    raise AssertionError(f"plan {plan_id} did not finish")


def test_pair_sort_verify_undo(box: Box) -> None:
    contents = make_inbox(box.share)
    desk = box.pair("laptop")

    # Reading is allowed outright: the listing comes back at once.
    r = desk.post(
        "/v1/intents", json={"intents": [{"verb": "file.list", "resource": "share:docs/Inbox"}]}
    )
    assert r.status_code == 200, r.text
    entries = r.json()["intents"][0]["result"]["entries"]
    pdfs = {
        e["name"]: datetime.fromtimestamp(e["mtime"], UTC).year
        for e in entries
        if e["name"].endswith(".pdf")
    }
    assert pdfs == YEARS

    intents = [
        {"verb": "file.mkdir", "resource": f"share:docs/{y}"} for y in sorted(set(pdfs.values()))
    ]
    intents += [
        {
            "verb": "file.move",
            "resource": f"share:docs/Inbox/{name}",
            "params": {"to": f"share:docs/{year}/{name}"},
        }
        for name, year in pdfs.items()
    ]
    r = desk.post("/v1/intents", json={"intents": intents})
    assert r.status_code == 202, r.text
    plan = r.json()
    assert plan["status"] == "pending_approval" and len(plan["code"]) == 4
    assert all(i["decision"] == "approve" for i in plan["intents"])
    # Nothing moves before the press.
    time.sleep(0.3)
    assert sorted(p.name for p in (box.share / "Inbox").iterdir()) == sorted([*YEARS, "notes.txt"])

    approval = desk.get(f"/v1/approvals/{plan['approval_id']}").json()
    assert approval["status"] == "pending" and approval["code"] == plan["code"]
    shown = box.cli("panel", "show", "--state-dir", str(box.state)).stdout
    assert plan["code"] in shown
    box.press("approve")
    plan = wait_plan(desk, plan["plan_id"])
    assert plan["status"] == "done", plan
    for name, year in YEARS.items():
        assert (box.share / str(year) / name).read_bytes() == contents[name]
        assert not (box.share / "Inbox" / name).exists()
    assert (box.share / "Inbox" / "notes.txt").exists()

    # The audit log proves what happened, and verifies end to end.
    audit = desk.get("/v1/audit", params={"limit": 1000}).json()
    kinds = [e["kind"] for e in audit["entries"]]
    for kind in ("plan.decided", "approval.receipt", "action.done", "client.paired"):
        assert kind in kinds
    done = [e["data"] for e in audit["entries"] if e["kind"] == "action.done"]
    moved = [d for d in done if d["verb"] == "file.move"]
    assert len(moved) == len(YEARS)
    assert all(d["token_id"] and d["approval_id"] == plan["approval_id"] for d in moved)
    checkpoint = desk.get("/v1/audit/checkpoint").json()
    assert checkpoint["tree_size"] >= len(audit["entries"]) - 1
    out = box.cli("audit", "verify", "--state-dir", str(box.state))
    assert "verifies" in out.stdout

    # Undo the whole plan: one approval, then everything is back.
    r = desk.post(f"/v1/plans/{plan['plan_id']}/undo")
    assert r.status_code == 202, r.text
    undo = r.json()
    box.press("approve")
    undo = wait_plan(desk, undo["plan_id"])
    assert undo["status"] == "done", undo
    for name in YEARS:
        assert (box.share / "Inbox" / name).read_bytes() == contents[name]
    for year in set(YEARS.values()):
        assert not (box.share / str(year)).exists()
    box.cli("audit", "verify", "--state-dir", str(box.state))


def test_deny_and_unpaired(box: Box) -> None:
    make_inbox(box.share)
    # Without a credential nothing but pairing answers.
    r = httpx.post(
        box.url + "/v1/intents",
        json={"intents": [{"verb": "file.list", "resource": "share:docs/Inbox"}]},
    )
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    desk = box.pair("laptop")
    r = desk.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.delete", "resource": "share:docs/Inbox/scan.pdf"}]},
    )
    assert r.status_code == 202
    box.press("deny")
    plan = wait_plan(desk, r.json()["plan_id"])
    assert plan["status"] == "denied"
    assert (box.share / "Inbox" / "scan.pdf").exists()
    # A revoked client is refused from then on.
    client_id = desk.headers["authorization"].split()[1].split(".")[0]
    box.cli("clients", "revoke", client_id, "--state-dir", str(box.state))
    r = desk.get("/v1/audit")
    assert r.status_code == 401 and "revoked" in r.json()["reason"]
