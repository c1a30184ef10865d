"""The console in a real browser: sign in with a press, watch a plan arrive
live, read every step, approve with the panel, see it done, undo it from
History, find it in the audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.console.conftest import Box, screenshot, sign_in, wait_until


def test_a_plan_from_the_desktop_to_its_undo(box: Box, page: Any) -> None:
    sign_in(box, page, shot="console-sign-in")
    desk = box.desk("laptop")
    page.wait_for_selector("#now h1:text('Nothing waits for a press')")

    plan = {
        "intents": [
            {"verb": "file.mkdir", "resource": "share:docs/2023"},
            {"verb": "file.move", "resource": "share:docs/Inbox/a.pdf",
             "params": {"to": "share:docs/2023/a.pdf"}},
            {"verb": "file.write", "resource": "share:docs/2023/README.txt",
             "params": {"content": "Invoices of 2023, sorted by the box.\n"}},
        ]
    }  # fmt: skip
    r = desk.post("/v1/intents", json=plan)
    assert r.status_code == 202, r.text
    sent = r.json()
    # It arrives by itself (server-sent events), rendered by the box.
    page.wait_for_selector(f'[data-approval="{sent["approval_id"]}"]')
    steps = page.query_selector_all("li.step")
    assert [s.get_attribute("data-verb") for s in steps] == [
        "file.mkdir",
        "file.move",
        "file.write",
    ]
    assert page.text_content("[data-code]") == sent["code"]
    before = int(page.text_content("[data-countdown]"))
    page.wait_for_timeout(1500)
    assert int(page.text_content("[data-countdown]")) < before  # it counts down
    assert "Invoices of 2023, sorted by the box." in page.text_content("[data-write]")
    assert "laptop" in page.text_content(".what h1")
    screenshot(page, "console-now")

    assert box.press().accepted
    page.wait_for_selector('[data-recent] [class~="plan-status"]:text("plan done")')
    done = desk.get(f"/v1/plans/{sent['plan_id']}", params={"wait": 10}).json()
    assert done["status"] == "done" and (box.docs / "2023" / "a.pdf").exists()

    # History: one click undoes the move; the undo waits for the press.
    page.click("nav >> text=History")
    move = next(i for i in done["intents"] if i["verb"] == "file.move")
    screenshot(page, "console-history")
    page.click(f'[data-undo="{move["action_id"]}"]')
    page.wait_for_url(box.url + "/")
    page.wait_for_selector("li.step[data-verb='action.undo']")
    assert "undoes" in page.text_content("li.step")
    assert box.press().accepted
    wait_until(lambda: (box.docs / "Inbox" / "a.pdf").exists())
    page.wait_for_selector('[data-recent] [class~="plan-status"]:text("plan done")')

    # The audit log has it: the undo, done, found by searching.
    page.click("nav >> text=Audit")
    page.fill("input[name=q]", "action.undo")
    page.fill("input[name=kind]", "action.done")
    page.click("form.search button")
    rows = page.query_selector_all("[data-entry]")
    assert [r.get_attribute("data-kind") for r in rows] == ["action.done"]
    assert "share:docs/2023/a.pdf" in rows[0].text_content()
    page.fill("input[name=q]", move["action_id"])
    page.fill("input[name=kind]", "")
    page.click("form.search button")
    assert "action.done" in [
        r.get_attribute("data-kind") for r in page.query_selector_all("[data-entry]")
    ]
    page.click("form.inline >> text=Check it now")
    assert "the whole log checks out" in page.text_content("[data-verified]")
    with page.expect_download() as download:
        page.click("text=Download it")
    kept = json.loads(Path(download.value.path()).read_text())
    assert kept["signature"] and 0 < kept["tree_size"] <= box.broker.audit.size
    screenshot(page, "console-audit")


def test_queue_clients_lockouts_plugins_and_the_box(box: Box, page: Any) -> None:
    sign_in(box, page)
    desk = box.desk("laptop")
    for n in range(3):  # the owner says no three times: the desktop is locked out
        desk.post(
            "/v1/intents",
            json={"intents": [{"verb": "file.mkdir", "resource": f"share:docs/n{n}"}]},
        )
        wait_until(box.broker.approvals.current)
        assert box.press("deny").accepted
    assert desk.get("/v1/approvals").json()["lockout"] is not None
    tablet = box.desk("tablet")
    for n in range(2):
        tablet.post(
            "/v1/intents",
            json={"intents": [{"verb": "file.mkdir", "resource": f"share:docs/t{n}"}]},
        )

    page.click("nav >> text=Queue")
    rows = page.query_selector_all("[data-approval]")
    assert len(rows) == 2 and "on the panel" in rows[0].text_content()
    screenshot(page, "console-queue")

    page.click("nav >> text=Clients")
    laptop = box.broker.clients.list()[1]["client_id"]
    assert page.query_selector(f'[data-lockout="{laptop}"]') is not None
    screenshot(page, "console-clients")
    page.click(f'[data-lift="{laptop}"]')
    page.wait_for_selector(f'[data-lockout="{laptop}"]', state="detached")
    assert desk.get("/v1/approvals").json()["lockout"] is None
    assert "approval.lockout_lifted" in box.kinds()
    tablet_id = tablet.headers["Authorization"].split()[1].split(".")[0]
    page.click(f'[data-revoke="{tablet_id}"]')
    page.wait_for_selector(f'[data-revoke="{tablet_id}"]', state="detached")
    assert tablet.get("/v1/approvals").status_code == 401
    assert box.broker.approvals.current() is None  # its waiting requests went with it

    page.click("nav >> text=Plugins")
    assert "No plugin is installed." in page.text_content("main")
    screenshot(page, "console-plugins")
    page.click("nav >> text=Box")
    assert page.text_content("[data-version]").startswith("0.")
    assert "development-unsafe-key" in page.text_content("main") or "UNSAFE" in page.text_content(
        "main"
    )
    screenshot(page, "console-box")
