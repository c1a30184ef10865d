"""Pairing: the only ``/v1`` calls without a credential (rate-limited per address)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from appliance.api.deps import BrokerDep, caller_ip, get_limiter
from appliance.api.limits import RateLimiter
from appliance.api.openapi import PAIRING_LINKS, WITH_BODY, answers
from appliance.broker.grants import MAX_EXPIRES_S
from appliance.names import CLIENT_NAME_MAX, SHARE_NAME, check_client_name, client_name_pattern

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


ShareName = Annotated[str, StringConstraints(pattern=f"^{SHARE_NAME.pattern}$")]


def _grant_schema(schema: dict[str, Any]) -> None:
    schema["examples"] = [{"shares": {"docs": "read-write"}, "expires_in_s": 86400}]
    # A key that is not a share name is refused too (not only left unchecked).
    for branch in schema["properties"]["shares"]["anyOf"]:
        if branch.get("type") == "object":
            branch["additionalProperties"] = False


class GrantRequest(BaseModel):
    """What a desktop asks to be allowed; shown on the panel, approved by the press."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_grant_schema)
    # Default: read every share, change none. A share the box does not have: 404.
    shares: dict[ShareName, Literal["read", "read-write"]] | None = None
    audit: StrictBool = False  # may read every desktop's history
    expires_in_s: Annotated[int, Field(ge=60, le=MAX_EXPIRES_S, strict=True)] | None = None


class PairingRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "laptop", "grant": {"shares": {"docs": "read"}}}]},
    )
    name: ClientName
    grant: GrantRequest | None = None


@router.post(
    "/v1/pairings",
    status_code=202,
    responses={202: {"links": PAIRING_LINKS}, **answers(*WITH_BODY, 403, 404, 429, 503)},
)
def pair(
    body: PairingRequest, request: Request, broker: BrokerDep, limiter: Limiter
) -> dict[str, Any]:
    limiter.take(f"ip:{caller_ip(request)}")
    grant = body.grant.model_dump(exclude_none=True) if body.grant else None
    return broker.pairing.request(body.name, caller_ip(request), grant)


@router.get("/v1/pairings/{pairing_id}", responses=answers(404, 410, 422, 429))
def pairing(
    pairing_id: str, request: Request, broker: BrokerDep, limiter: Limiter
) -> dict[str, Any]:
    limiter.take(f"ip:{caller_ip(request)}")
    return broker.pairing.result(pairing_id)
