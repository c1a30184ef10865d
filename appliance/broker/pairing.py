"""Pairing: how a desktop gets a credential, and how it loses it.

A desktop asks (``POST /v1/pairings``) with the grant it wants
(``grants.py``); the request goes on the panel like any approval, the grant
written out in its summary, and only a press there lets the credential be
fetched, once, by whoever holds the pairing secret the requester alone was
told (``GET /v1/pairings/{secret}``). The panel, the approval list and the
audit log name the pairing only by its public reference. On a physical box
the owner must first open a pairing window with a long hold on the idle
button, so a LAN device cannot even ask otherwise. The client store
(``clients.py``) keeps the credentials and grants.
"""

from __future__ import annotations

import threading
from typing import Any

from appliance.approval import ApprovalQueue, ApprovalRequest, Panel
from appliance.audit import AuditLog
from appliance.broker.clients import Clients, check_name
from appliance.broker.grants import requested_grant
from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.intents import digest
from appliance.names import shown
from appliance.policy import PolicyEngine, PolicyRequest
from appliance.verbs import PAIR_VERB


class Pairing:
    def __init__(
        self,
        *,
        config: Config,
        clients: Clients,
        policy: PolicyEngine,
        approvals: ApprovalQueue,
        panel: Panel,
        audit: AuditLog,
        lock: threading.RLock,
    ) -> None:
        self.config = config
        self.clients = clients
        self.policy = policy
        self.approvals = approvals
        self.panel = panel
        self.audit = audit
        # Shared with the broker: a pairing is stored with its approval before
        # that approval's decision can be handled.
        self._lock = lock

    def request(
        self, name: str, address: str = "local", grant: object = None, *, console: bool = False
    ) -> dict[str, Any]:
        """A desktop asks to pair, for ``grant`` (default: read every share).
        ``address`` (the caller's IP) is the requester, so one LAN device
        cannot fill the approval queue under many names. Only the box's own
        console (``console``, never the LAN API) may ask for an owner grant;
        the panel's summary says so before the press."""
        name = check_name(name)
        wanted = requested_grant(grant, sorted(self.config.shares), owner_allowed=console)
        decision = self.policy.decide(
            PolicyRequest(verb=PAIR_VERB, requester=f"unpaired:{address}", share=None, path="")
        )
        if decision.decision == "deny":
            self._refused(name, address, list(decision.reasons))
            raise ApplianceError(
                "pairing refused: " + " ".join(decision.reasons), code="denied", status=403
            )
        if not self.panel.virtual and self.approvals.pairing_window() is None:
            # A physical box listens for pairing only after its owner opened a
            # window at the box: a LAN device cannot even ask otherwise.
            self._refused(name, address, ["the pairing window is closed"])
            raise ApplianceError(
                "pairing is closed: hold the box's button for "
                f"{self.config.panel.pairing_hold_s:g} seconds while its light is idle to open "
                f"a pairing window ({self.config.approvals.pairing_window_s:g} s), then pair again",
                code="pairing_closed",
                status=403,
            )
        # Even a policy that "allows" pairing gets a press: a credential is
        # only ever handed out after a person said yes at the box.
        with self._lock:
            secret, ref = self.clients.new_pairing(name, address, wanted)
            try:
                approval = self.approvals.submit(
                    kind="pairing",
                    subject_id=ref,
                    requester=f"unpaired:{address}",
                    summary=f"A desktop named {shown(name, quote=True)} at {address} asks to pair: "
                    + wanted.describe(),
                    # The press approves this name, this address and this grant.
                    digest=digest(
                        {"pairing": ref, "name": name, "address": address}
                        | {"grant": wanted.to_json()}
                    ),
                )
            except ApplianceError:
                self.clients.drop_pairing(ref)
                raise
            self.clients.attach_approval(ref, approval.approval_id, approval.code)
            self.audit.append(
                "pairing.requested",
                {
                    "pairing": ref,
                    "name": name,
                    "address": address,
                    "grant": wanted.to_json(),
                    "approval_id": approval.approval_id,
                },
            )
        return {
            "pairing_id": secret,
            "pairing": ref,
            "code": approval.code,
            "approval_id": approval.approval_id,
            "grant": wanted.to_json(),
        }

    def _refused(self, name: str, address: str, reasons: list[str]) -> None:
        self.audit.append("pairing.refused", {"name": name, "address": address, "reasons": reasons})

    def decided(self, request: ApprovalRequest) -> None:
        self.clients.set_pairing_status(request.subject_id, request.status)

    def result(self, secret: str) -> dict[str, Any]:
        """The credential of an approved pairing, exactly once, to whoever holds
        its secret; else its status."""
        out = self.clients.deliver(secret)
        if "credential" in out:
            self.audit.append(
                "client.paired",
                {"pairing": out.pop("ref"), "client_id": out["client_id"], "grant": out["grant"]},
            )
        return out
