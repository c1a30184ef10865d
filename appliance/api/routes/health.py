"""``/healthz``: whether privileged actions can run, and if not, why (open)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from appliance.api.contract import API_VERSIONS
from appliance.api.deps import BrokerDep

router = APIRouter()


@router.get(
    "/healthz",
    response_class=JSONResponse,
    responses={
        503: {
            "description": "Privileged actions cannot run now; problems says why.",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "required": ["status", "problems"]}
                }
            },
        }
    },
)
def healthz(broker: BrokerDep) -> JSONResponse:
    # api_versions: the LAN contract versions this box answers (clients negotiate).
    health = {**broker.health(), "api_versions": list(API_VERSIONS)}
    return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)
