"""Pairing: the only ``/v1`` calls without a credential (rate-limited per address)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from appliance.api.deps import BrokerDep, caller_ip, get_limiter
from appliance.api.limits import RateLimiter

router = APIRouter()
Limiter = Annotated[RateLimiter, Depends(get_limiter)]


class PairingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    # What the desktop asks to be allowed: {"shares": {"docs": "read" |
    # "read-write"}, "audit": false, "expires_in_s": 86400}; shown on the
    # panel and approved by the press. Default: read every share, change none.
    grant: dict[str, Any] | None = None


@router.post("/v1/pairings", status_code=202)
def pair(
    body: PairingRequest, request: Request, broker: BrokerDep, limiter: Limiter
) -> dict[str, Any]:
    limiter.take(f"ip:{caller_ip(request)}")
    return broker.pairing.request(body.name, caller_ip(request), body.grant)


@router.get("/v1/pairings/{pairing_id}")
def pairing(
    pairing_id: str, request: Request, broker: BrokerDep, limiter: Limiter
) -> dict[str, Any]:
    limiter.take(f"ip:{caller_ip(request)}")
    return broker.pairing.result(pairing_id)
