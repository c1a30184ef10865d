"""The control socket's operations: what `appliance panel|clients|status` may do."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.approval import ApprovalRequest, Panel, PanelState
from appliance.box import open_box
from appliance.broker.control import control_handler
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config
from appliance.errors import ApplianceError


class PhysicalPanel(Panel):
    """A panel that is not virtual, with the base's defaults for the rest."""

    name = "gpio"
    virtual = False

    def show(self, request: ApprovalRequest | None) -> None:
        pass

    def indicate(self, state: PanelState) -> None:
        pass


def make(tmp_path: Path, panel: Panel | None = None) -> Broker:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    config = Config(
        state_dir=tmp_path / "state",
        shares={"docs": share},
        dev=True,
        keystore="dev",
        approvals=ApprovalSettings(timeout_s=30, arming_delay_s=0),
    )
    return open_box(config, panel=panel)


def test_press_needs_the_shown_digest(tmp_path: Path) -> None:
    broker = make(tmp_path)
    handle = control_handler(broker)
    try:
        broker.pairing.request("desk")
        shown = handle({"op": "panel.show"})["pending"]
        with pytest.raises(ApplianceError, match="digest"):
            handle({"op": "panel.press", "decision": "approve"})
        wrong = handle({"op": "panel.press", "decision": "approve", "digest": "ab" * 32})
        assert wrong["accepted"] is False
        assert broker.approvals.current().approval_id == shown["approval_id"]
        ok = handle({"op": "panel.press", "decision": "approve", "digest": shown["digest"]})
        assert ok["accepted"] is True
    finally:
        broker.close()


def test_socket_cannot_approve_for_a_physical_panel(tmp_path: Path) -> None:
    broker = make(tmp_path, PhysicalPanel())
    handle = control_handler(broker)
    try:
        assert broker.approvals.open_pairing_window(source="button")  # the long hold
        broker.pairing.request("desk")
        shown = handle({"op": "panel.show"})["pending"]
        with pytest.raises(ApplianceError) as e:
            handle({"op": "panel.press", "decision": "approve", "digest": shown["digest"]})
        assert e.value.code == "not_virtual"
        assert broker.approvals.current().status == "pending"
    finally:
        broker.close()


def test_unknown_op_and_status(tmp_path: Path) -> None:
    broker = make(tmp_path)
    handle = control_handler(broker)
    try:
        with pytest.raises(ApplianceError, match="unknown control operation"):
            handle({"op": "shell", "cmd": "rm -rf /"})
        status = handle({"op": "status"})
        assert status["unsafe_signer"] is True and status["panel"]["virtual"] is True
        assert handle({"op": "tokens.revoke_all"})["epoch"] == status["epoch"] + 1
    finally:
        broker.close()
