"""Who gets the console: only a browser signed in with a press, with its
session cookie, from the console's own pages. A missing, forged or expired
session, a form without its CSRF token, a page of another origin that posts
or frames the console: each gets nothing."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.console.conftest import Attacker, Box, sign_in, wait_until


def cookies_of(page: Any) -> dict[str, Any]:
    return {c["name"]: c for c in page.context.cookies()}


def test_the_session_cookie_is_httponly_strict_and_ends(box: Box, page: Any) -> None:
    sign_in(box, page)
    cookie = cookies_of(page)["console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    session_s = box.broker.config.console.session_s
    assert abs(cookie["expires"] - (time.time() + session_s)) < 120
    assert page.evaluate("document.cookie") == ""  # no script can read it
    # The console's pairing is an owner grant that ends with the session.
    me = next(c for c in box.broker.clients.list() if c["grant"]["owner"])
    assert abs(me["grant"]["expires"] - cookie["expires"]) < 120


def test_no_session_a_forged_one_or_an_ended_one_gets_nothing(box: Box, page: Any) -> None:
    desk = box.desk("laptop")
    for cookies in ({}, {"console": "forged-" + "A" * 43}):
        with httpx.Client(base_url=box.url, cookies=cookies) as http:
            r = http.get("/", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/pair"
            assert http.get("/now/fragment", follow_redirects=False).status_code == 303
            assert http.get("/v1/approvals").status_code == 401
            assert http.get("/v1/events").status_code == 401
    page.context.add_cookies([{"name": "console", "value": "forged", "url": box.url}])
    page.goto(box.url + "/")
    assert page.url.endswith("/pair")

    # Signed in, then the session runs out: the page goes back to signing in.
    sign_in(box, page)
    desk.post("/v1/intents", json={"intents": [{"verb": "file.mkdir", "resource": "share:docs/x"}]})
    page.wait_for_selector("li.step[data-verb='file.mkdir']")
    token = cookies_of(page)["console"]["value"]
    with httpx.Client(base_url=box.url, cookies={"console": token}) as http:
        assert http.get("/v1/approvals").status_code == 200
        sessions = box.app.state.sessions
        sessions.clock = lambda: time.time() + box.broker.config.console.session_s + 1
        try:
            assert http.get("/v1/approvals").status_code == 401
            assert http.get("/", follow_redirects=False).headers["location"] == "/pair"
            page.reload()
            assert page.url.endswith("/pair")
        finally:
            sessions.clock = time.time
        # The ended session is gone for good, not just until the clock turns back.
        assert http.get("/v1/approvals").status_code == 401


def test_forms_and_calls_without_the_csrf_token_are_refused(box: Box, page: Any) -> None:
    desk = box.desk("laptop")
    sign_in(box, page)
    sent = desk.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.delete", "resource": "share:docs/notes.txt"}]},
    ).json()
    shown = wait_until(box.broker.approvals.current)
    page.wait_for_selector(f'[data-approval="{sent["approval_id"]}"][data-seen="1"]')
    box.press()
    wait_until(lambda: not (box.docs / "notes.txt").exists())
    action = desk.get(f"/v1/plans/{sent['plan_id']}", params={"wait": 10}).json()["intents"][0]
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    token = cookies_of(page)["console"]["value"]
    with httpx.Client(base_url=box.url, cookies={"console": token}) as http:
        for fields in ({"action_id": action["action_id"]},
                       {"action_id": action["action_id"], "csrf": "guess"}):  # fmt: skip
            r = http.post("/history/undo", data=fields)
            assert r.status_code == 403 and r.json()["code"] == "csrf"
        # The API with the cookie: reads yes, changes only with the header.
        assert http.get("/v1/approvals").status_code == 200
        r = http.post(f"/v1/approvals/{shown.approval_id}/seen", json={"digest": shown.digest})
        assert r.status_code == 403 and r.json()["code"] == "csrf"
        r = http.post(
            "/history/undo",
            data={"action_id": action["action_id"], "csrf": csrf},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert r.status_code == 403
    assert box.broker.approvals.current() is None  # no undo was asked for
    assert not (box.docs / "notes.txt").exists()


def test_another_page_cannot_post_for_the_console_nor_frame_it(
    box: Box, page: Any, attacker: Attacker
) -> None:
    desk = box.desk("laptop")
    sign_in(box, page)
    r = desk.post(
        "/v1/intents", json={"intents": [{"verb": "file.mkdir", "resource": "share:docs/y"}]}
    )
    page.wait_for_selector(f'[data-approval="{r.json()["approval_id"]}"]')
    box.press()
    plan = desk.get(f"/v1/plans/{r.json()['plan_id']}", params={"wait": 10}).json()
    action_id = plan["intents"][0]["action_id"]

    # A page elsewhere on the LAN posts the undo form (the browser sends the
    # cookie: same site), and frames the console to trick a click.
    attacker.pages["/post"] = (
        f'<form method="post" action="{box.url}/history/undo">'
        f'<input name="action_id" value="{action_id}"><input name="csrf" value="guess">'
        '<button id="go">win a prize</button></form>'
    )
    attacker.pages["/frame"] = f'<iframe id="f" src="{box.url}/history"></iframe>'
    page.goto(attacker.url + "/post")
    page.click("#go")
    page.wait_for_load_state()
    assert "csrf" in page.content()
    assert box.broker.approvals.current() is None  # nothing was asked

    page.goto(attacker.url + "/frame")
    page.wait_for_timeout(500)
    framed = page.frames[1]
    assert framed.url != box.url + "/history"
    assert framed.query_selector("header.top") is None  # the console did not render in it
    response = httpx.get(box.url + "/history", follow_redirects=False)
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
