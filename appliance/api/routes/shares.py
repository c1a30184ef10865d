"""The shares a desktop may name in its plans (``share:NAME/...``): those its
grant includes, and whether it may change them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from appliance.api.deps import BrokerDep, Client
from appliance.api.openapi import AUTHENTICATED, answers

router = APIRouter()


@router.get("/v1/shares", responses=answers(*AUTHENTICATED))
def shares(client_id: Client, broker: BrokerDep) -> dict[str, Any]:
    """Each share the caller's grant includes: its name, the resource that
    names its top folder, and ``access`` ("read" or "read-write"). Only
    names: what is inside is listed, like any read, through a plan."""
    client = broker.evaluator.requester(client_id)
    grant = client.grant if client else None
    return {
        "shares": [
            {
                "name": name,
                "resource": f"share:{name}",
                "access": "read-write" if grant.writes(name) else "read",
            }
            for name in sorted(broker.config.shares)
            if grant is not None and grant.reads(name)
        ]
    }
