"""A box serving its console on a real port (the broker in this process, so
the tests press the virtual panel and read its state), desktops paired
through the real press, and a real browser: Debian's chromium driven by
Playwright (never Playwright's own browser downloads)."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn

from appliance.agent.server import AgentServer
from appliance.api.app import create_app
from appliance.box import open_box
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config, Limits
from tests.panel.conftest import wait_for as wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The pictures docs/console.md and the README show: taken on every run (the
# page must render), written into docs/img/ only by `make screenshots`, so
# that a test run leaves the tree as it was.
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
IMG = (
    DOCS_IMG
    if os.environ.get("APPLIANCE_SCREENSHOTS") == "docs"
    else Path(tempfile.gettempdir()) / f"appliance-screenshots-{os.getuid()}"
)
RW_DOCS = {"shares": {"docs": "read-write"}}


class Planner:
    """The box's model, as a test writes it: the plan it answers."""

    def __init__(self) -> None:
        self.backend = SimpleNamespace(model_id="test-model-1.5b", model_sha256="ab" * 32)
        self.intents: list[dict[str, Any]] = []

    def plan(self, text: str, listing: dict[str, list[str]]) -> SimpleNamespace:
        result = {
            "intents": self.intents,
            "model_id": self.backend.model_id,
            "model_sha256": self.backend.model_sha256,
            "seconds": 0.1,
            "tokens": 5,
        }
        return SimpleNamespace(to_dict=lambda: result)

    def extract(self, content: str, fields: dict[str, str]) -> dict[str, Any]:
        return {"values": {f: None for f in fields}, "model_id": self.backend.model_id,
                "model_sha256": self.backend.model_sha256}  # fmt: skip


@dataclass
class Box:
    broker: Broker
    url: str
    docs: Path
    photos: Path
    planner: Planner
    app: Any
    desks: dict[str, httpx.Client] = field(default_factory=dict)

    def desk(self, name: str, grant: dict[str, Any] | None = RW_DOCS) -> httpx.Client:
        """A desktop paired through the API and a press on the virtual panel."""
        http = httpx.Client(base_url=self.url, timeout=20)
        r = http.post("/v1/pairings", json={"name": name, "grant": grant})
        assert r.status_code == 202, r.text
        started = r.json()
        shown = wait_until(self.broker.approvals.current)
        assert shown.code == started["code"]
        self.press()
        r = http.get(f"/v1/pairings/{started['pairing_id']}")
        assert "credential" in r.json(), r.text
        http.headers["Authorization"] = "Bearer " + r.json()["credential"]
        self.desks[name] = http
        return http

    def press(self, decision: str = "approve") -> Any:
        """The virtual panel's press, for the request it shows now (and its digest)."""
        shown = self.broker.approvals.current()
        assert shown is not None, "nothing is on the panel"
        time.sleep(max(0.0, self.broker.config.approvals.arming_delay_s + 0.05))
        return self.broker.panel.press(decision, digest=shown.digest)  # type: ignore[arg-type]

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.broker.audit.entries(0, 100_000)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15)
    return f"http://127.0.0.1:{port}", server, thread


def open_console_box(root: Path, **approvals: Any) -> Iterator[Box]:
    docs, photos = root / "docs", root / "photos"
    for d in (docs / "Inbox", photos):
        d.mkdir(parents=True)
    (docs / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    (docs / "notes.txt").write_text("milk\neggs\n")
    (photos / "cat.jpg").write_bytes(b"\xff\xd8 cat")
    planner = Planner()
    sock = root / "agent.sock"
    agent = AgentServer(sock, planner, broker_uid=None)  # type: ignore[arg-type]
    agent.serve_in_thread()
    settings = {"timeout_s": 60, "arming_delay_s": 0.3, "queue_size": 8} | approvals
    config = Config(
        state_dir=root / "state",
        shares={"docs": docs, "photos": photos},
        dev=True,
        keystore="dev",
        approvals=ApprovalSettings(**settings),
        limits=Limits(requests_per_second=1000, burst=1000),
        agent_socket=sock,
        agent_timeout_s=20,
    )
    broker = open_box(config)
    app = create_app(broker, secure=False)
    url, server, thread = serve(app)
    try:
        yield Box(broker, url, docs, photos, planner, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        broker.close()
        agent.stop()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    yield from open_console_box(tmp_path)


# One browser for the console's tests, closed once they end: Playwright's
# sync API keeps an event loop running in this thread while it is open, and
# the later suites call asyncio.run().
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


def sign_in(box: Box, page: Any, shot: str | None = None) -> None:
    """Sign the console in: the form, the code, the press on the box."""
    page.goto(box.url + "/")
    assert page.url.endswith("/pair")
    page.fill("input[name=name]", "owner's console")
    page.click("button[type=submit]")
    code = page.text_content("[data-code]")
    shown = wait_until(box.broker.approvals.current)
    assert shown.kind == "pairing" and shown.code == code
    assert "OWNER console" in shown.summary
    if shot:
        screenshot(page, shot)
    assert box.press().accepted
    page.wait_for_url(box.url + "/")
    page.wait_for_selector("#now")


class Attacker:
    """Another web page on the LAN (another port of the same host: the same
    *site* to a browser, so SameSite cookies go along), serving what the
    attacker writes."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    a = Attacker()
    try:
        yield a
    finally:
        a.close()


def screenshot(page: Any, name: str, *, full_page: bool = True) -> None:
    """A picture of the page (into docs/img/ under `make screenshots`)."""
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / f"{name}.png"), full_page=full_page)
