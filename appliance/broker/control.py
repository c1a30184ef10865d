"""What the local control socket can ask of the running broker.

The socket is owner-only (see appliance.approval.control); these ops are what
`appliance panel|clients|status|plugins` use on the box itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.broker.service import Broker
from appliance.errors import ApplianceError


def control_handler(broker: Broker) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def handle(request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return broker.status()
        if op == "panel.show":
            shown = broker.approvals.public_list()
            return {"pending": shown[0] if shown else None, "waiting": shown[1:]}
        if op == "panel.press":
            decision = request.get("decision")
            if decision not in ("approve", "deny"):
                raise ApplianceError("decision must be 'approve' or 'deny'")
            digest = request.get("digest")
            if not isinstance(digest, str):
                raise ApplianceError("a press must name the digest of the request it answers")
            # Only a virtual panel takes presses from the socket: with a physical
            # panel, the button is the only way to approve (Panel.press refuses).
            result = broker.panel.press(decision, digest=digest, source="cli")
            return {
                "accepted": result.accepted,
                "approval_id": result.approval_id,
                "reason": result.reason,
            }
        if op == "clients.list":
            return {"clients": broker.clients.list()}
        if op == "clients.revoke":
            return broker.revoke_client(str(request.get("client_id", "")))
        if op == "plugins.list":
            return {"plugins": broker.plugins.list()}
        if op in ("plugins.install", "plugins.remove", "plugins.verify"):
            arg = request.get("path" if op == "plugins.install" else "name")
            if not isinstance(arg, str) or not arg:
                raise ApplianceError(f"{op} needs a plugin folder or name")
            if op == "plugins.install":
                return broker.plugins.install(Path(arg))
            return (
                broker.plugins.remove(arg) if op == "plugins.remove" else broker.plugins.verify(arg)
            )
        if op == "retention.purge":
            days = request.get("older_than_days", 0)
            if isinstance(days, bool) or not isinstance(days, int | float) or not days >= 0:
                raise ApplianceError("older_than_days must be a number of days, 0 or more")
            purged = broker.retention.purge(older_than_s=float(days) * 86400.0)
            return {"purged": purged, "retention": broker.retention.status()}
        if op == "tokens.revoke_all":
            return {"epoch": broker.revoke_all_tokens()}
        raise ApplianceError(f"unknown control operation {op!r}", code="unknown_op")

    return handle
