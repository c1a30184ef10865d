"""Pairing: the only ``/v1`` calls without a credential (rate-limited per address)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from appliance.api.deps import BrokerDep, caller_ip, get_limiter
from appliance.api.limits import RateLimiter
from appliance.api.openapi import PAIRING_LINKS, WITH_BODY, answers
from appliance.names import CLIENT_NAME_MAX, check_client_name, client_name_pattern

router = APIRouter()
Limiter = Annotated[RateLimiter, Depends(get_limiter)]


def _name_schema(schema: dict[str, Any]) -> None:
    schema.update(minLength=1, maxLength=CLIENT_NAME_MAX, pattern=client_name_pattern())


# Shown on the panel and in the audit log: no controls, bidirectional or
# zero-width characters (appliance.names.check_client_name says which).
ClientName = Annotated[
    str,
    AfterValidator(check_client_name),
    Field(description="this desktop's name as the owner sees it", json_schema_extra=_name_schema),
]


class PairingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "laptop"}]})
    name: ClientName


@router.post(
    "/v1/pairings",
    status_code=202,
    responses={202: {"links": PAIRING_LINKS}, **answers(*WITH_BODY, 403, 429, 503)},
)
def pair(
    body: PairingRequest, request: Request, broker: BrokerDep, limiter: Limiter
) -> dict[str, Any]:
    limiter.take(f"ip:{caller_ip(request)}")
    return broker.pairing.request(body.name, caller_ip(request))


@router.get("/v1/pairings/{pairing_id}", responses=answers(404, 410, 422, 429))
def pairing(
    pairing_id: str, request: Request, broker: BrokerDep, limiter: Limiter
) -> dict[str, Any]:
    limiter.take(f"ip:{caller_ip(request)}")
    return broker.pairing.result(pairing_id)
