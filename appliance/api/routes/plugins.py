"""Installed plugins, and running one of their verbs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from appliance.api.deps import BrokerDep, Client
from appliance.api.openapi import AUTHENTICATED, WITH_BODY, answers
from appliance.api.routes.plans import STATUS_FOR_PLAN

router = APIRouter()


class PluginRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verb: str
    input: Any = None  # handed to the plugin as JSON


@router.get("/v1/plugins", responses=answers(*AUTHENTICATED))
def plugins(_: Client, broker: BrokerDep) -> dict[str, Any]:
    return {"plugins": broker.plugins.list()}


@router.post(
    "/v1/plugins/{name}/run",
    responses=answers(*AUTHENTICATED, *WITH_BODY, 404, 409, 503, plan=True),
)
def run_plugin(
    name: str, body: PluginRunRequest, client_id: Client, broker: BrokerDep
) -> JSONResponse:
    """Run a plugin's verb; the changes it proposes become a plan (in "plan")."""
    out = broker.run_plugin(client_id, name, body.verb, body.input)
    plan = out["plan"]
    return JSONResponse(out, status_code=STATUS_FOR_PLAN.get(plan["status"], 200) if plan else 200)
