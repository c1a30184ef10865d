"""The gpiozero panel inside the broker: pairing only through the window a long
hold opens, approvals by a hold, lockouts in the API and `appliance status`,
and signed receipts that tie each action to the press that allowed it."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.api.app import create_app
from appliance.approval.gpio import GpioPanel
from appliance.approval.receipts import Receipt, ReceiptError, sign_receipt, verify_receipt
from appliance.box import open_box
from appliance.broker.control import control_handler
from appliance.broker.executor import claims
from appliance.broker.service import Broker
from appliance.cli import main
from appliance.config import ApprovalSettings, Config
from appliance.errors import TokenError
from appliance.issuer.keys import DevKeyStore
from appliance.issuer.tokens import Claims

from .conftest import FAST_PANEL, SteppedClock, wait_for

APPROVALS = ApprovalSettings(
    timeout_s=30, arming_delay_s=0.3, pairing_window_s=5, lockout_after=3, lockout_s=60
)
WRITE = {"intents": [{"verb": "file.mkdir", "resource": "share:docs/new"}]}


@dataclass
class Box:
    broker: Broker
    factory: MockFactory
    http: TestClient
    clock: SteppedClock

    def armed(self) -> None:
        """Let the arming delay pass on the box's clock (no sleeping)."""
        self.clock.advance(APPROVALS.arming_delay_s + 0.05)

    def hold(self, seconds: float) -> None:
        pin = self.factory.pin(FAST_PANEL.button_pin)
        pin.drive_low()
        time.sleep(seconds)
        pin.drive_high()

    def double_tap(self) -> None:
        self.hold(0.08)
        time.sleep(0.1)
        self.hold(0.08)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.broker.audit.entries(0, 10_000) if e["kind"] == kind]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    share = tmp_path / "share"
    share.mkdir()
    config = Config(
        state_dir=tmp_path / "state",
        shares={"docs": share},
        dev=True,
        keystore="dev",
        approvals=APPROVALS,
        panel=FAST_PANEL,
    )
    factory = MockFactory(pin_class=MockPWMPin)
    clock = SteppedClock()
    panel = GpioPanel(FAST_PANEL, pin_factory=factory, clock=clock)
    broker = open_box(config, panel=panel, clock=clock)
    yield Box(broker, factory, TestClient(create_app(broker)), clock)
    broker.close()


def pair(box: Box) -> str:
    box.hold(0.95)  # open the pairing window
    wait_for(lambda: box.broker.approvals.pairing_window())
    grant = {"shares": {"docs": "read-write"}}
    r = box.http.post("/v1/pairings", json={"name": "laptop", "grant": grant})
    assert r.status_code == 202, r.text
    box.armed()
    box.hold(0.4)
    r = wait_for(
        lambda: (
            (x := box.http.get(f"/v1/pairings/{r.json()['pairing_id']}")).json().get("credential")
            and x
        )
    )
    return r.json()["credential"]


def test_pairing_needs_the_window_a_long_hold_opens(box: Box) -> None:
    r = box.http.post("/v1/pairings", json={"name": "laptop"})
    assert r.status_code == 403 and r.json()["code"] == "pairing_closed"
    assert "hold the box's button" in r.json()["reason"]
    assert box.broker.approvals.current() is None  # nothing reached the panel
    credential = pair(box)
    assert credential
    # One pairing per window: it closed once the desktop was paired.
    assert box.broker.approvals.pairing_window() is None
    assert wait_for(lambda: box.broker.panel.display()[0] == "idle")
    again = box.http.post("/v1/pairings", json={"name": "other"})
    assert again.status_code == 403
    opened = box.audit("approval.pairing_window")
    assert [o["open"] for o in opened] == [True, False]
    assert box.audit("pairing.refused")


def submit_and_hold(box: Box) -> dict[str, Any]:
    plan = box.http.post("/v1/intents", json=WRITE).json()
    assert plan["status"] == "pending_approval", plan
    box.armed()
    box.hold(0.4)
    return box.http.get(f"/v1/plans/{plan['plan_id']}", params={"wait": 5}).json()


def test_hold_runs_the_plan_and_the_receipt_proves_which_press(box: Box) -> None:
    box.http.headers["Authorization"] = "Bearer " + pair(box)
    plan = submit_and_hold(box)
    assert plan["status"] == "done", plan
    receipt = box.audit("approval.receipt")[-1]
    assert receipt["gesture"] == "hold" and receipt["decided_by"] == "button"
    assert receipt["subject_id"] == plan["plan_id"]
    done = box.audit("action.done")[-1]
    assert done["receipt_digest"] == receipt["receipt_digest"]
    pem = box.broker.signer.public_key_pem()
    row = box.broker.plans.plan_row(plan["plan_id"])
    assert row is not None
    verify_receipt(receipt, pem, approval_id=row.approval_id, request_digest=row.digest)
    # Every press is on the record, including the ones that did nothing.
    presses = box.audit("approval.press")
    assert {p["gesture"] for p in presses} >= {"hold"}


def test_lockout_after_denials_shows_in_the_api_and_status(box: Box) -> None:
    box.http.headers["Authorization"] = "Bearer " + pair(box)
    for _ in range(3):
        plan = box.http.post("/v1/intents", json=WRITE).json()
        box.armed()
        box.double_tap()
        done = box.http.get(f"/v1/plans/{plan['plan_id']}", params={"wait": 5}).json()
        assert done["status"] == "denied", done
    r = box.http.post("/v1/intents", json=WRITE)
    assert r.status_code == 429 and r.json()["code"] == "locked_out", r.text
    lockout = box.http.get("/v1/approvals").json()["lockout"]
    assert lockout["seconds_left"] > 50
    status = control_handler(box.broker)({"op": "status"})
    assert [x["requester"] for x in status["lockouts"]] == [lockout["requester"]]
    assert status["panel"]["name"] == "gpio" and status["panel"]["virtual"] is False
    assert box.audit("approval.lockout")[0]["requester"] == lockout["requester"]


# ---------------------------------------------------------------------- receipts
def receipt_for(broker: Broker, **kw: Any) -> Receipt:
    args = {
        "approval_id": "apr_1",
        "kind": "plan",
        "subject_id": "plan_1",
        "request_digest": "ab" * 32,
        "decided_by": "button",
        "gesture": "hold",
        "signer_label": broker.keystore.label,
    }
    return sign_receipt(broker.signer, **{**args, **kw})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("digest", "cd" * 32),
        ("approval_id", "apr_2"),
        ("gesture", "cli"),
        ("status", "denied"),
        ("time", 0.0),
    ],
)
def test_altered_receipt_refused(box: Box, field: str, value: Any) -> None:
    pem = box.broker.signer.public_key_pem()
    receipt = receipt_for(box.broker)
    assert verify_receipt(receipt, pem).approval_id == "apr_1"
    altered = {**receipt.to_dict(), field: value}
    with pytest.raises(ReceiptError) as e:
        verify_receipt(altered, pem)
    assert "does not verify" in e.value.reason


def test_receipt_signed_by_another_key_or_for_another_request_refused(
    box: Box, tmp_path: Path
) -> None:
    pem = box.broker.signer.public_key_pem()
    other = DevKeyStore(tmp_path / "other").device_signer()
    forged = sign_receipt(
        other,
        approval_id="apr_1",
        kind="plan",
        subject_id="plan_1",
        request_digest="ab" * 32,
        decided_by="button",
        gesture="hold",
        signer_label="x",
    )
    with pytest.raises(ReceiptError, match="does not verify"):
        verify_receipt(forged, pem)
    genuine = receipt_for(box.broker)
    with pytest.raises(ReceiptError, match="another request"):
        verify_receipt(genuine, pem, request_digest="cd" * 32)
    with pytest.raises(ReceiptError, match="not apr_9"):
        verify_receipt(genuine, pem, approval_id="apr_9")


def approved_plan(box: Box) -> tuple[str, Receipt, Claims]:
    """A write plan approved (a signed receipt stored) but not run: its
    action, the receipt, and the claims the executor expects for it."""
    plan = box.http.post("/v1/intents", json=WRITE).json()
    row = box.broker.plans.plan_row(plan["plan_id"])
    assert row is not None and row.approval_id is not None
    request = box.broker.approvals.get(row.approval_id)
    box.broker.approvals.cancel(row.approval_id)
    receipt = box.broker.receipts.sign(
        dataclasses.replace(request, status="approved", decided_by="button", gesture="hold")
    )
    action = box.broker.plans.actions(plan["plan_id"])[0]
    return action.action_id, receipt, claims(row, action, receipt)


def test_token_citing_another_requests_receipt_is_refused(box: Box) -> None:
    box.http.headers["Authorization"] = "Bearer " + pair(box)
    action_a, receipt_a, claims_a = approved_plan(box)
    action_b, receipt_b, claims_b = approved_plan(box)
    # A token for B's action that cites A's receipt: the claims the executor
    # rebuilds from B's stored approval and receipt do not match.
    token = box.broker.tokens.mint(
        dataclasses.replace(claims_b, receipt_digest=receipt_a.receipt_digest)
    )
    with pytest.raises(TokenError) as e:
        box.broker.executor.execute(token, action_b)
    assert e.value.code == "token_mismatch"
    # B's stored receipt swapped for A's (someone with the database): refused.
    box.broker.db.execute(
        "UPDATE receipts SET receipt = ? WHERE approval_id = ?",
        (json.dumps(receipt_a.to_dict()), claims_b.approval_id),
    )
    with pytest.raises(ReceiptError, match=f"not {claims_b.approval_id}"):
        box.broker.executor.execute(box.broker.tokens.mint(claims_b), action_b)
    # Nothing ran, no token was spent; A's own token still runs A.
    assert box.broker.tokens.spent_count() == 0
    box.broker.executor.execute(box.broker.tokens.mint(claims_a), action_a)


def test_receipt_verify_command(box: Box, tmp_path: Path, capsys) -> None:
    pem = tmp_path / "device.pub.pem"
    pem.write_bytes(box.broker.signer.public_key_pem())
    receipt = receipt_for(box.broker)
    good = tmp_path / "r.json"
    good.write_text(json.dumps(receipt.to_dict()))
    assert main(["receipt", "verify", str(good), "--public-key", str(pem)]) == 0
    assert "ok: approval apr_1" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**receipt.to_dict(), "digest": "00" * 32}))
    assert main(["receipt", "verify", str(bad), "--public-key", str(pem)]) == 1
    assert "does not verify" in capsys.readouterr().err
