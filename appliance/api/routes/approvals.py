"""The approval queue as a desktop sees it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from appliance.api.deps import BrokerDep, Client, Wait, wait_for
from appliance.api.openapi import AUTHENTICATED, answers
from appliance.errors import NotFound

router = APIRouter()


@router.get("/v1/approvals", responses=answers(*AUTHENTICATED))
def approvals(client_id: Client, broker: BrokerDep) -> dict[str, Any]:
    # "lockout": whether this caller is locked out of approvals, and how long.
    return {
        "approvals": broker.views.approvals_of(client_id),
        "lockout": broker.approvals.lockout(client_id),
    }


@router.get("/v1/approvals/{approval_id}", responses=answers(*AUTHENTICATED, 404, 422))
async def approval(
    approval_id: str, client_id: Client, broker: BrokerDep, wait: Wait = 0
) -> dict[str, Any]:
    def get() -> dict[str, Any] | None:
        try:
            return broker.views.approval(client_id, approval_id)
        except NotFound:
            return None

    return await wait_for(
        get, wait, lambda a: a["status"] != "pending", f"no approval {approval_id!r}"
    )
