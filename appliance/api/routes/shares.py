"""The shares a desktop may name in its plans (``share:NAME/...``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from appliance.api.deps import BrokerDep, Client

router = APIRouter()


@router.get("/v1/shares")
def shares(_: Client, broker: BrokerDep) -> dict[str, Any]:
    """Each share's name and the resource that names its top folder. Only
    names: what is inside is listed, like any read, through a plan."""
    return {
        "shares": [
            {"name": name, "resource": f"share:{name}"} for name in sorted(broker.config.shares)
        ]
    }
