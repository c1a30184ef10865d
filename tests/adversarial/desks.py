"""A box with a share or two and desktops paired through the real pairing
path (the press on the virtual panel), for the attacks in this folder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.box import open_box
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config, Limits

RW_DOCS = {"shares": {"docs": "read-write"}}


@dataclass
class Box:
    broker: Broker
    root: Path
    docs: Path
    photos: Path
    desks: dict[str, TestClient] = field(default_factory=dict)

    def anon(self, address: str = "testclient") -> TestClient:
        return TestClient(create_app(self.broker), client=(address, 50000))

    def pair(
        self, name: str, grant: dict[str, Any] | None = RW_DOCS, address: str = "testclient"
    ) -> TestClient:
        """A desktop paired through the API and a press on the virtual panel."""
        http = self.anon(address)
        r = http.post("/v1/pairings", json={"name": name, "grant": grant})
        assert r.status_code == 202, r.text
        started = r.json()
        shown = self.broker.approvals.current()
        assert shown is not None and shown.code == started["code"]
        assert self.broker.panel.press("approve", digest=shown.digest).accepted
        r = http.get(f"/v1/pairings/{started['pairing_id']}")
        assert r.status_code == 200 and "credential" in r.json(), r.text
        http.headers["Authorization"] = "Bearer " + r.json()["credential"]
        self.desks[name] = http
        return http

    def client_id(self, name: str) -> str:
        return self.desks[name].headers["Authorization"].split()[1].split(".")[0]

    def press(self, decision: str = "approve") -> bool:
        shown = self.broker.approvals.current()
        return shown is not None and self.broker.panel.press(decision, digest=shown.digest).accepted

    def wait(self, http: TestClient, plan_id: str) -> dict[str, Any]:
        return http.get(f"/v1/plans/{plan_id}", params={"wait": 10}).json()

    def audit_kinds(self) -> list[str]:
        return [e["kind"] for e in self.broker.audit.entries(0, 100_000)]

    def state_bytes(self) -> int:
        state = self.root / "state"
        return sum(p.stat().st_size for p in state.rglob("*") if p.is_file())

    def kept_bytes(self) -> int:
        """What the state keeps: every file but the database, and of the
        database the pages in use (free pages are reused by what comes next).
        The write-ahead log is not counted: once checkpointed its frames are
        in those pages, and SQLite reuses the file, bounded by its
        autocheckpoint (about 4 MiB), whatever the box has done."""
        db = self.broker.db
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.one("PRAGMA page_count")[0] - db.one("PRAGMA freelist_count")[0]
        used = pages * db.one("PRAGMA page_size")[0]
        state = self.root / "state"
        database = sum(
            (state / n).stat().st_size
            for n in ("state.db", "state.db-wal", "state.db-shm")
            if (state / n).exists()
        )
        return used + self.state_bytes() - database


def open_test_box(root: Path, **kw: Any) -> Iterator[Box]:
    docs, photos = root / "docs", root / "photos"
    for d in (docs / "Inbox", photos):
        d.mkdir(parents=True)
    (docs / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    (docs / "secret.txt").write_text("the owner's secret")
    (photos / "cat.jpg").write_bytes(b"\xff\xd8 cat")
    config = Config(
        state_dir=root / "state",
        shares={"docs": docs, "photos": photos},
        dev=True,
        keystore="dev",
        approvals=kw.pop(
            "approvals", ApprovalSettings(timeout_s=30, arming_delay_s=0.0, queue_size=4)
        ),
        limits=kw.pop("limits", Limits(requests_per_second=1000, burst=1000)),
        **kw,
    )
    broker = open_box(config)
    try:
        yield Box(broker, root, docs, photos)
    finally:
        broker.close()


def wait_until(cond: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
