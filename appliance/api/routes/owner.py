"""What only the box's owner may ask, through its console: the box's state,
the paired clients and revoking one, lockouts and lifting one, checking the
audit log end to end. Each needs an owner grant (``deps.Owner``), which only
the console gets, at the box, with a press."""

from __future__ import annotations

import shutil
import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from appliance import __version__
from appliance.agent.client import AgentClient
from appliance.api.deps import BrokerDep, Client, Owner
from appliance.api.openapi import AUTHENTICATED, answers
from appliance.audit import verify_log
from appliance.broker.service import Broker
from appliance.errors import ApplianceError, NotFound
from appliance.names import escaped, name_warnings

router = APIRouter()
# Every owner route may also answer 403: the caller is not the box's console.
OWNER = (*AUTHENTICATED, 403)

MODEL_ASK_S = 3.0  # how long the box page waits for the model agent's answer


def box(broker: Broker) -> dict[str, Any]:
    """The box: mode, keys and TPM, model, panel, shares, disk, version."""
    config = broker.config
    out = broker.status() | {"version": __version__, "health": broker.health()}
    out["boot_count"] = broker.keystore.boot_count
    tpm = broker.keystore.tpm
    out["tpm"] = tpm.status() if tpm is not None else None
    try:
        agent = AgentClient(
            config.agent_socket_path, agent_uid=config.agent_uid, timeout_s=MODEL_ASK_S
        )
        out["model"] = agent.health()
    except ApplianceError as e:
        out["model"] = {"error": e.reason}
    if "disk" not in out:
        usage = shutil.disk_usage(config.state_dir)
        out["disk"] = {"total_bytes": usage.total, "free_bytes": usage.free}
    out["plugins"] = len(broker.plugins.list())
    return out


@router.get("/v1/box", responses=answers(*OWNER))
async def get_box(_: Owner, broker: BrokerDep) -> dict[str, Any]:
    return await run_in_threadpool(box, broker)


def clients(broker: Broker, start: int, limit: int, *, everyone: bool) -> dict[str, Any]:
    """Paired clients newest first (``everyone``: revoked and ended too),
    each name escaped and flagged, each grant in words."""
    rows = []
    for c in reversed(broker.clients.list()):
        record = broker.clients.get(c["client_id"])
        active = record is not None and record.active
        if not everyone and not active:
            continue
        assert record is not None
        rows.append(
            c
            | {
                "name": escaped(c["name"]),
                "flags": name_warnings(c["name"]),
                "active": active,
                "described": record.grant.describe(),
                "lockout": broker.approvals.lockout(c["client_id"]),
            }
        )
    page = rows[start : start + limit]
    nxt = start + len(page)
    return {"clients": page, "total": len(rows), "next": nxt if nxt < len(rows) else None}


@router.get("/v1/clients", responses=answers(*OWNER, 422))
def get_clients(
    _: Owner,
    broker: BrokerDep,
    start: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    everyone: bool = False,
) -> dict[str, Any]:
    return clients(broker, start, limit, everyone=everyone)


@router.post("/v1/clients/{client_id}/revoke", responses=answers(*OWNER, 404, 422))
def revoke(client_id: str, _: Owner, broker: BrokerDep) -> dict[str, Any]:
    """Revoke a paired client: its credential stops working and nothing it
    asked for runs any more."""
    return broker.revoke_client(client_id)


@router.get("/v1/lockouts", responses=answers(*OWNER))
def lockouts(_: Owner, broker: BrokerDep) -> dict[str, Any]:
    return {"lockouts": broker.approvals.lockouts()}


@router.post("/v1/lockouts/{requester}/lift", responses=answers(*OWNER, 404, 422))
def lift(requester: str, owner: Owner, broker: BrokerDep) -> dict[str, Any]:
    """End a lockout now (the owner says the requester asked in good faith)."""
    if not broker.approvals.lift_lockout(requester, by=owner):
        raise NotFound(f"{requester!r} is not locked out")
    return {"lifted": requester, "lockouts": broker.approvals.lockouts()}


class AuditCheck:
    """The audit log checked end to end with the device's public key alone
    (``verify_log``), as a desktop holding a copy would: the last result,
    and a new check when asked (one at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last: dict[str, Any] | None = None

    def run(self, broker: Broker) -> dict[str, Any]:
        with self._lock:
            began = time.time()
            report = verify_log(broker.config.audit_dir, broker.signer.public_key_pem())
            self.last = {
                "ok": report.ok,
                "entries": report.entries,
                "checkpoints": report.checkpoints,
                "problems": report.problems[:20],
                "warnings": report.warnings[:20],
                "unsafe_signer": report.unsafe_signer,
                "checked_at": began,
                "seconds": round(time.time() - began, 3),
            }
            return self.last


def audit_check(request: Request) -> AuditCheck:
    state = request.app.state
    if not hasattr(state, "audit_check"):
        state.audit_check = AuditCheck()
    check: AuditCheck = state.audit_check
    return check


def audit_state(broker: Broker, check: AuditCheck) -> dict[str, Any]:
    """The chain as the box holds it now (size, root, newest signed
    checkpoint), and the last end-to-end check."""
    return {
        "size": broker.audit.size,
        "root_hash": broker.audit.root_hash(),
        "checkpoint": broker.audit.latest_checkpoint(),
        "opened_verified": True,  # the broker opens a log only if it verifies
        "check": check.last,
    }


@router.get("/v1/audit/state", responses=answers(*AUTHENTICATED))
def get_audit_state(request: Request, _: Client, broker: BrokerDep) -> dict[str, Any]:
    return audit_state(broker, audit_check(request))


@router.post("/v1/audit/verify", responses=answers(*OWNER))
async def verify(request: Request, _: Owner, broker: BrokerDep) -> dict[str, Any]:
    """Check the whole log now, as ``appliance audit verify`` does."""
    return await run_in_threadpool(audit_check(request).run, broker)
