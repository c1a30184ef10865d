"""What the broker is made of (:class:`Parts`), and the box's state as
people and desktops are told it: ``/healthz`` (whether privileged actions
can run, and if not, why) and the status the CLI and the owner's console
show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance import __version__
from appliance.approval import ApprovalQueue, Panel
from appliance.approval.receipts import ReceiptStore
from appliance.audit import AuditLog
from appliance.broker.clients import Clients
from appliance.broker.evaluate import Evaluator
from appliance.broker.executor import Executor
from appliance.broker.files import FileOps
from appliance.broker.plans import PlanStore
from appliance.broker.retention import Retention
from appliance.broker.scope import Shares
from appliance.broker.snapshots import SnapshotStore
from appliance.broker.storage import Storage
from appliance.broker.tasks import TaskStore
from appliance.config import Config
from appliance.db import Database
from appliance.errors import ApplianceError
from appliance.issuer.keys import KeyStore, Signer
from appliance.issuer.statement import BootChain
from appliance.issuer.tokens import TokenService
from appliance.plugins.host import PluginHost
from appliance.policy import PolicyEngine


@dataclass
class Parts:
    """Everything the broker is made of, built by ``appliance.box.open_box``."""

    config: Config
    keystore: KeyStore
    signer: Signer
    db: Database
    audit: AuditLog
    policy: PolicyEngine
    tokens: TokenService
    chain: BootChain
    shares: Shares
    snapshots: SnapshotStore
    files: FileOps
    retention: Retention
    storage: Storage
    plans: PlanStore
    task_store: TaskStore
    clients: Clients
    receipts: ReceiptStore
    panel: Panel
    approvals: ApprovalQueue
    plugins: PluginHost
    evaluator: Evaluator
    executor: Executor


def health(parts: Parts, rollback: str | None) -> dict[str, Any]:
    """What /healthz answers: whether privileged actions can run, and if not, why."""
    problems = []
    if parts.audit.closed:
        problems.append(
            f"the audit log is unavailable ({parts.audit.failure or 'closed'}); "
            "nothing can run until it is repaired and the broker restarted"
        )
    if parts.keystore.tpm is not None:
        try:
            parts.keystore.tpm.check()
        except ApplianceError as e:
            problems.append(e.reason)
    warnings = []
    if parts.keystore.unsafe:
        warnings.append("keys are UNSAFE development keys, not in a TPM")
    if rollback:
        warnings.append(rollback)
    if parts.storage.status()["low"]:
        warnings.append("the data partition is full: changes are refused, reads go on")
    return {
        "status": "ok" if not problems else "unavailable",
        "problems": problems,
        "warnings": warnings,
        "mode": "development" if parts.config.dev else "production",
        "signer": parts.keystore.label,
        "unsafe_signer": parts.keystore.unsafe,
        "panel": parts.panel.name,
        "version": __version__,
    }


def status(parts: Parts) -> dict[str, Any]:
    current = parts.approvals.current()
    return {
        "mode": "development" if parts.config.dev else "production",
        "signer": parts.keystore.label,
        "unsafe_signer": parts.keystore.unsafe,
        "device_key_id": parts.signer.key_id,
        "panel": {"name": parts.panel.name, "virtual": parts.panel.virtual}
        | parts.panel.snapshot(),
        "shares": {name: str(path) for name, path in parts.config.shares.items()},
        "pending_approval": parts.approvals.public(current.approval_id) if current else None,
        "waiting_approvals": max(0, len(parts.approvals.list()) - 1),
        "pairing_window_s": parts.approvals.pairing_window(),
        "lockouts": parts.approvals.lockouts(),
        "audit_size": parts.audit.size,
        "epoch": parts.tokens.epoch(),
        "retention": parts.retention.status(),
        "disk": parts.storage.status(),
    }
