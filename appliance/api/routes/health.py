"""``/healthz``: whether privileged actions can run, and if not, why (open)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from appliance.api.deps import BrokerDep

router = APIRouter()


@router.get("/healthz")
def healthz(broker: BrokerDep) -> JSONResponse:
    health = broker.health()
    return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)
