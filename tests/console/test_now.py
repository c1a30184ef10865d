"""The red-team plans against the console's Now page: a delete behind a long
first path and many steps, names that do not read as themselves, a plan the
box's model proposed. Every step is rendered, the names flagged; and a risky
plan is approved by no press until the console has shown it to its end."""

from __future__ import annotations

from typing import Any

from tests.console.conftest import Box, screenshot, sign_in, wait_until

LONG = "Quarterly statements and receipts " * 6  # a first path that fills a line
SCRIPTED = "<img src=x onerror=alert(1)>.pdf"  # a name that is markup


def hidden_delete_plan(box: Box, moves: int) -> dict[str, Any]:
    inbox = box.docs / "Inbox"
    (inbox / f"{LONG.strip()}.pdf").write_bytes(b"%PDF long")
    (inbox / "p\u0430ypal.pdf").write_bytes(b"%PDF look-alike")  # a Cyrillic a
    (inbox / "invoice\u200b.pdf").write_bytes(b"%PDF zero-width")
    (inbox / SCRIPTED).write_bytes(b"%PDF markup")
    names = [f"{LONG.strip()}.pdf", "p\u0430ypal.pdf", "invoice\u200b.pdf", SCRIPTED]
    for i in range(moves - len(names)):
        name = f"scan-{i:03}.pdf"
        (inbox / name).write_bytes(b"%PDF")
        names.append(name)
    intents: list[dict[str, Any]] = [{"verb": "file.mkdir", "resource": "share:docs/Sorted"}]
    intents += [
        {"verb": "file.move", "resource": f"share:docs/Inbox/{n}",
         "params": {"to": f"share:docs/Sorted/{n}"}}
        for n in names
    ]  # fmt: skip
    intents.append({"verb": "file.delete", "resource": "share:docs/notes.txt"})
    return {"intents": intents}


def test_a_hidden_delete_and_look_alike_names_are_all_shown_and_flagged(
    box: Box, page: Any
) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(box, page)
    desk = box.desk("laptop")
    plan = hidden_delete_plan(box, moves=10)
    sent = desk.post("/v1/intents", json=plan).json()
    # The panel's own summary names the delete, whatever stands before it.
    shown = wait_until(box.broker.approvals.current)
    assert "file.delete share:docs/notes.txt [delete]" in shown.summary
    assert "10 × file.move, 1 × file.mkdir, 1 × file.delete" in shown.summary

    page.wait_for_selector(f'[data-approval="{sent["approval_id"]}"]')
    steps = page.query_selector_all("li.step")
    assert len(steps) == 12, "every step is rendered, none behind '+N more'"
    last = steps[-1]
    assert last.get_attribute("data-verb") == "file.delete" and last.is_visible()
    assert (
        "notes.txt" in last.text_content()
        and "delete" in last.query_selector(".tag").text_content()
    )
    assert "file, 10 bytes" in last.text_content()  # what it deletes, as it is now
    counts = [c.text_content() for c in page.query_selector_all(".counts .count")]
    assert counts == ["10 × file.move", "1 × file.mkdir", "1 × file.delete"]

    flagged = {
        s.get_attribute("data-step"): s.text_content()
        for s in page.query_selector_all("li.step.flagged")
    }
    assert len(flagged) == 2
    texts = " ".join(flagged.values())
    assert "mixed scripts: Cyrillic+Latin" in texts
    assert "zero-width characters" in texts and "invoice\\u200b.pdf" in texts
    assert "2 steps name something that may not read" in page.text_content(".facts")
    # A name that is markup is shown as text, and runs nothing.
    assert SCRIPTED in page.text_content("li.step[data-step='5']")
    assert page.query_selector("li.step img") is None and dialogs == []
    screenshot(page, "console-hidden-delete")
    # On a phone, too.
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "console-now-phone", full_page=False)


def test_a_risky_plan_is_not_approvable_until_the_console_has_shown_it(box: Box, page: Any) -> None:
    sign_in(box, page)
    page.click("nav >> text=History")  # the console is open, but not on Now
    desk = box.desk("laptop")
    sent = desk.post("/v1/intents", json=hidden_delete_plan(box, moves=30)).json()
    assert sent["status"] == "pending_approval"
    shown = wait_until(box.broker.approvals.current)
    assert shown.console and "it deletes (1)" in shown.console

    # The desktop shows the code; the light beats "needs the console"; a press does nothing.
    assert box.broker.panel.state == "console"
    refused = box.press()
    assert not refused.accepted and "needs the console" in refused.reason
    public = desk.get(f"/v1/approvals/{sent['approval_id']}").json()
    assert public["needs_console"] and not public["seen_on_console"]

    # Now shows it, but the plan is long: until its end has been on screen, nothing.
    page.click("nav >> text=Now")
    request = page.wait_for_selector(f'[data-approval="{sent["approval_id"]}"]')
    assert request.get_attribute("data-seen") == "0"
    assert "needs the console" in page.text_content("[data-arming]")
    page.wait_for_timeout(800)
    assert not box.press().accepted and box.broker.panel.state == "console"

    page.locator("[data-end-of-plan]").scroll_into_view_if_needed()
    page.wait_for_selector(f'[data-approval="{sent["approval_id"]}"][data-seen="1"]')
    assert box.broker.panel.state == "pending"  # the light shows the code now
    assert box.press().accepted
    done = desk.get(f"/v1/plans/{sent['plan_id']}", params={"wait": 10}).json()
    assert done["status"] == "done" and not (box.docs / "notes.txt").exists()
    seen = [e for e in box.broker.audit.entries(0, 10_000) if e["kind"] == "approval.seen"]
    assert [e["data"]["digest"] for e in seen] == [shown.digest]


def test_a_plan_of_the_box_s_model_says_so_with_the_words_it_was_given(box: Box, page: Any) -> None:
    sign_in(box, page)
    desk = box.desk("laptop")
    box.planner.intents = [
        {"verb": "file.mkdir", "resource": "share:docs/2023"},
        {"verb": "file.move", "resource": "share:docs/Inbox/a.pdf",
         "params": {"to": "share:docs/2023/a.pdf"}},
        {"verb": "file.delete", "resource": "share:docs/notes.txt"},
    ]  # fmt: skip
    task = desk.post("/v1/tasks", json={"text": "sort the PDFs in my Inbox by year"}).json()
    page.wait_for_selector("li.step[data-verb='file.delete']")
    model = page.text_content(".facts .model")
    assert "the box's model" in model and "test-model-1.5b" in model and task["task_id"] in model
    assert page.text_content(".words") == "sort the PDFs in my Inbox by year"
    delete = page.text_content("li.step[data-verb='file.delete']")
    assert "the task's words do not name this path" in delete
    move = page.text_content("li.step[data-verb='file.move']")
    assert "do not name" not in move  # "Inbox" is in the words
    screenshot(page, "console-model-plan")
    shown = box.broker.approvals.current()
    assert shown is not None and "[the box's model test-model-1.5b, for a task]" in shown.summary

    # Denied: the desktop asked in good faith; the model's plan is not held against it.
    assert not shown.counts
    assert box.press("deny").accepted
    ended = desk.get(f"/v1/tasks/{task['task_id']}", params={"wait": 10}).json()
    assert ended["status"] == "denied" and (box.docs / "notes.txt").exists()
    assert box.broker.tasks.words(task["task_id"]) is None  # only the hash is kept now
