"""``/healthz``: whether privileged actions can run, and if not, why (open)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

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
    health = broker.health()
    return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)
