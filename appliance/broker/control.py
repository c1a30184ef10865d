"""What the local control socket can ask of the running broker.

The socket is owner-only (see appliance.approval.control); these ops are what
`appliance panel|clients|status` use on the box itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.broker.service import Broker
from appliance.errors import ApplianceError


def control_handler(broker: Broker) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def handle(request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return broker.status()
        if op == "panel.show":
            current = broker.approvals.current()
            return {
                "pending": current.to_public() | {"digest": current.digest} if current else None,
                "queued": [a.to_public() for a in broker.approvals.list()],
            }
        if op == "panel.press":
            decision = request.get("decision")
            if decision not in ("approve", "deny"):
                raise ApplianceError("decision must be 'approve' or 'deny'")
            result = broker.approvals.press(
                decision, digest=request.get("digest"), source="virtual-panel"
            )
            return {
                "accepted": result.accepted,
                "approval_id": result.approval_id,
                "reason": result.reason,
            }
        if op == "clients.list":
            return {"clients": broker.clients.list()}
        if op == "clients.revoke":
            broker.revoke_client(str(request.get("client_id", "")))
            return {"revoked": request.get("client_id")}
        if op == "tokens.revoke_all":
            return {"epoch": broker.revoke_all_tokens()}
        raise ApplianceError(f"unknown control operation {op!r}", code="unknown_op")

    return handle
