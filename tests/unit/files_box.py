"""A broker in process for the file, trash, retention and full-disk tests:
built by ``open_box`` on the development key store, its wall clock in the
test's hands (retention counts days on it), driven through the LAN API."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.box import open_box
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config, RetentionSettings

DAY = 86400.0


class Clock:
    """A wall clock that moves only when the test moves it."""

    def __init__(self, t: float = 1_750_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def forward(self, seconds: float) -> None:
        self.t += seconds


class Box:
    def __init__(self, root: Path, share: Path, clock: Clock, **retention: Any):
        self.root, self.share, self.clock = root, share, clock
        self.retention = RetentionSettings(**retention)
        self.broker = self.open()
        self.http = self.client("laptop")

    def open(self) -> Broker:
        config = Config(
            state_dir=self.root / "state",
            shares={"docs": self.share},
            dev=True,
            keystore="dev",
            approvals=ApprovalSettings(timeout_s=30, arming_delay_s=0.0, queue_size=4),
            retention=self.retention,
        )
        return open_box(config, now=self.clock)

    def client(self, name: str) -> TestClient:
        http = TestClient(create_app(self.broker))
        grant = {"shares": {"docs": "read-write"}}
        r = http.post("/v1/pairings", json={"name": name, "grant": grant})
        assert r.status_code == 202, r.text
        assert self.approve()
        credential = http.get(f"/v1/pairings/{r.json()['pairing_id']}").json()["credential"]
        http.headers["Authorization"] = f"Bearer {credential}"
        return http

    def approve(self) -> bool:
        """Approve the request on the panel as its owner would: one that needs
        the console (a delete: trusted arming) is shown there first."""
        shown = self.broker.approvals.current()
        if shown is not None and shown.waits_for_console:
            self.broker.approvals.seen(shown.approval_id, shown.digest, by="console")
        return self.broker.approvals.press("approve", source="test").accepted

    def wait(self, plan_id: str) -> dict[str, Any]:
        return self.http.get(f"/v1/plans/{plan_id}", params={"wait": 10}).json()

    def run(self, verb: str, resource: str, **params: Any) -> dict[str, Any]:
        """Submit one intent, press when asked, and return the finished plan."""
        intent = {"verb": verb, "resource": resource, "params": params}
        r = self.http.post("/v1/intents", json={"intents": [intent]})
        assert r.status_code in (200, 202), r.text
        plan = r.json()
        if plan["status"] == "pending_approval":
            assert self.approve()
            plan = self.wait(plan["plan_id"])
        return plan

    def undo(self, action_id: str) -> tuple[int, dict[str, Any]]:
        """Ask to undo; press; the HTTP status and the finished plan (or the refusal)."""
        r = self.http.post(f"/v1/actions/{action_id}/undo")
        if r.status_code != 202:
            return r.status_code, r.json()
        assert self.approve()
        return r.status_code, self.wait(r.json()["plan_id"])

    def run_until_killed(self, path: str, body: dict[str, Any] | None = None) -> str:
        """POST ``path`` (an intent or an undo), press, and wait until the
        plan's thread has run to its end or been killed; the plan id."""
        r = self.http.post(path, json=body) if body is not None else self.http.post(path)
        assert r.status_code == 202, r.text
        plan_id = r.json()["plan_id"]
        assert self.approve()
        deadline = time.monotonic() + 10
        while any(t.name == f"plan-{plan_id}" for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the plan did not end"
            time.sleep(0.005)
        return plan_id

    def kill(self) -> None:
        """Stop as a kill -9 would: no orderly shutdown, files released."""
        self.broker.retention.close()
        self.broker.audit.close()
        self.broker.db.close()

    def restart(self) -> None:
        """Open the box again on the same state; the same paired desktop
        (its credential survives the restart) asks about its own plans."""
        credential = self.http.headers["Authorization"]
        self.broker = self.open()
        self.http = TestClient(create_app(self.broker))
        self.http.headers["Authorization"] = credential

    def close(self) -> None:
        self.broker.close()

    def audit(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.broker.audit.entries(0, 1000) if e["kind"] == kind]
