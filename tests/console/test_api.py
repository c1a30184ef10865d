"""The console's routes and the owner-only API, without a browser: an owner
grant is never given over the LAN API, a desktop gets nothing of the owner's
routes, a desktop's review and history are its own, and a console served
over TLS sets a Secure, ``__Host-`` cookie."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from tests.console.conftest import Box, open_console_box, wait_until


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def console(box: Box, http: httpx.Client | TestClient) -> None:
    """Sign ``http`` in as the box's console: the form, then the press."""
    r = http.post("/pair", data={"name": "console", "csrf": csrf_of(http.get("/pair").text)})
    assert r.status_code == 303
    shown = wait_until(box.broker.approvals.current)
    assert shown.kind == "pairing" and "OWNER console" in shown.summary
    assert box.press().accepted
    r = http.get("/pair", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_an_owner_grant_is_never_given_over_the_lan_api(box: Box) -> None:
    with httpx.Client(base_url=box.url) as http:
        for grant in ({"owner": True}, {"owner": True, "shares": {"docs": "read-write"}}):
            # The LAN API's grant has no "owner" field at all: only the box's
            # console asks the broker for one, never through this body.
            r = http.post("/v1/pairings", json={"name": "sneaky", "grant": grant})
            assert r.status_code == 422 and r.json()["code"] == "invalid_request"
            assert "owner" in r.json()["reason"]
    assert box.broker.approvals.current() is None  # nothing reached the panel
    assert "pairing.requested" not in box.kinds()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/box"),
        ("GET", "/v1/clients"),
        ("POST", "/v1/clients/cl_x/revoke"),
        ("GET", "/v1/lockouts"),
        ("POST", "/v1/lockouts/cl_x/lift"),
        ("POST", "/v1/audit/verify"),
    ],
)
def test_a_desktop_gets_nothing_of_the_owners_routes(box: Box, method: str, path: str) -> None:
    desk = box.desk("laptop", {"shares": {"docs": "read-write"}, "audit": True})
    r = desk.request(method, path)
    assert r.status_code == 403 and r.json()["code"] == "owner_only"


def test_only_the_owner_console_marks_a_request_shown(box: Box) -> None:
    desk = box.desk("laptop")
    sent = desk.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.delete", "resource": "share:docs/notes.txt"}]},
    ).json()
    shown = wait_until(box.broker.approvals.current)
    # The requester itself cannot say it was shown: its screen is its own.
    r = desk.post(f"/v1/approvals/{sent['approval_id']}/seen", json={"digest": shown.digest})
    assert r.status_code == 403 and r.json()["code"] == "owner_only"
    assert not box.press().accepted
    assert box.press("deny").accepted  # denying needs no console


def test_the_console_marks_the_request_on_the_panel_with_its_csrf_token(
    box: Box,
) -> None:
    desk = box.desk("laptop")
    with httpx.Client(base_url=box.url) as http:
        console(box, http)
        csrf = csrf_of(http.get("/").text)
        sent = desk.post(
            "/v1/intents",
            json={"intents": [{"verb": "file.delete", "resource": "share:docs/notes.txt"}]},
        ).json()
        shown = wait_until(box.broker.approvals.current)
        r = http.post(
            f"/v1/approvals/{sent['approval_id']}/seen",
            json={"digest": "0" * 64},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 404  # not the digest on the panel
        r = http.post(
            f"/v1/approvals/{sent['approval_id']}/seen",
            json={"digest": shown.digest},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 200 and r.json()["seen_on_console"]
        review = http.get(f"/v1/approvals/{sent['approval_id']}/review").json()
        assert [s["verb"] for s in review["steps"]] == ["file.delete"]
        assert box.press().accepted


def test_a_desktop_reads_its_own_review_and_history_only(box: Box) -> None:
    mine, other = box.desk("laptop"), box.desk("tablet")
    sent = mine.post(
        "/v1/intents", json={"intents": [{"verb": "file.mkdir", "resource": "share:docs/m"}]}
    ).json()
    review = mine.get(f"/v1/approvals/{sent['approval_id']}/review").json()
    assert review["steps"][0]["resource"]["raw"] == "share:docs/m"
    assert other.get(f"/v1/approvals/{sent['approval_id']}/review").status_code == 404
    assert box.press().accepted
    mine.get(f"/v1/plans/{sent['plan_id']}", params={"wait": 10})
    assert [p["plan_id"] for p in mine.get("/v1/plans").json()["plans"]] == [sent["plan_id"]]
    assert other.get("/v1/plans").json() == {"plans": [], "total": 0, "next": None}
    found = other.get("/v1/audit/search", params={"q": sent["plan_id"]}).json()
    assert found["entries"] == []
    found = mine.get("/v1/audit/search", params={"q": sent["plan_id"], "kind": "plan."}).json()
    assert {e["kind"] for e in found["entries"]} == {"plan.decided"}


def test_over_tls_the_cookie_is_secure_and_host_only(tmp_path: Path) -> None:
    for box in open_console_box(tmp_path):
        app = create_app(box.broker, secure=True)
        with TestClient(app, base_url="https://box.local") as http:
            r = http.get("/pair")
            assert "__Host-console-sign-in=" in r.headers["set-cookie"]
            assert (
                "Secure" in r.headers["set-cookie"] and "SameSite=strict" in r.headers["set-cookie"]
            )
            r = http.post("/pair", data={"name": "console", "csrf": csrf_of(r.text)})
            wait_until(box.broker.approvals.current)
            assert box.press().accepted
            r = http.get("/pair", follow_redirects=False)
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("__Host-console=") and "HttpOnly" in cookie
            assert "Secure" in cookie and "SameSite=strict" in cookie and "Max-Age=" in cookie
            assert http.get("/").status_code == 200
            assert http.get("/v1/box").json()["version"]


def test_the_review_shows_the_text_a_write_would_change_and_a_copy_into_another_share(
    box: Box,
) -> None:
    desk = box.desk("laptop", {"shares": {"docs": "read-write", "photos": "read-write"}})
    sent = desk.post(
        "/v1/intents",
        json={
            "intents": [
                {
                    "verb": "file.write",
                    "resource": "share:docs/notes.txt",
                    "params": {"content": "milk\nbread\n\u202eevil\n"},
                },
                {
                    "verb": "file.copy",
                    "resource": "share:docs/Inbox/a.pdf",
                    "params": {"to": "share:photos/a.pdf"},
                },
            ]
        },  # fmt: skip
    ).json()
    write, copy = desk.get(f"/v1/approvals/{sent['approval_id']}/review").json()["steps"]
    assert write["looks"] == {"kind": "file", "bytes": 10, "mtime": write["looks"]["mtime"]}
    assert "-eggs" in write["diff"] and "+bread" in write["diff"]
    assert write["content"]["flags"] == ["bidirectional controls"]
    assert "\\u202eevil" in write["content"]["shown"]  # escaped, never drawn
    assert any("a file of this name is there now" in n for n in write["notes"])
    assert any("leaves the share 'docs' for 'photos'" in n for n in copy["notes"])
    assert copy["to_looks"] == {"kind": "missing"}


def test_every_list_is_paged(box: Box) -> None:
    desk = box.desk("laptop")
    stat = {"intents": [{"verb": "file.stat", "resource": "share:docs/notes.txt"}]}
    for _ in range(25):
        desk.post("/v1/intents", json=stat)
    first = desk.get("/v1/plans", params={"limit": 20}).json()
    assert len(first["plans"]) == 20 and first["total"] == 25 and first["next"] == 20
    rest = desk.get("/v1/plans", params={"start": first["next"], "limit": 20}).json()
    assert len(rest["plans"]) == 5 and rest["next"] is None
    assert desk.get("/v1/plans", params={"changes": True}).json()["total"] == 0
    with httpx.Client(base_url=box.url) as http:
        console(box, http)
        page2 = http.get("/history", params={"reads": True, "page_no": 2}).text
        assert "page 2 of 2 (25)" in page2 and page2.count('class="plan"') == 5
        found = http.get("/audit").text
        assert found.count("data-entry=") == 20 and "older →" in found
