"""Plans of intents: submit, read (waiting for the end), undo; actions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from appliance.api.deps import BrokerDep, Client, Wait, wait_for
from appliance.api.openapi import AUTHENTICATED, WITH_BODY, answers
from appliance.broker.plans import TERMINAL
from appliance.errors import ApplianceError, NotFound
from appliance.intents import Plan, plan_schema

router = APIRouter()

STATUS_FOR_PLAN = {
    "done": 200,
    "pending_approval": 202,
    "denied": 403,
    "failed": 200,
    "expired": 200,
    "running": 202,
}


def plan_response(plan: dict[str, Any]) -> JSONResponse:
    return JSONResponse(plan, status_code=STATUS_FOR_PLAN.get(plan["status"], 200))


@router.post("/v1/intents", responses=answers(*AUTHENTICATED, *WITH_BODY, 503, plan=True))
def submit(plan: Plan, client_id: Client, broker: BrokerDep) -> JSONResponse:
    limit = broker.config.limits.intents_per_plan
    if len(plan.intents) > limit:
        raise ApplianceError(
            f"a plan holds at most {limit} intents", code="plan_too_large", status=422
        )
    return plan_response(broker.submit(client_id, plan.intents))


@router.get("/v1/intents/schema", responses=answers(*AUTHENTICATED))
def schema(_: Client) -> dict[str, Any]:
    return plan_schema()


@router.get("/v1/plans/{plan_id}", responses=answers(*AUTHENTICATED, 404, 422))
async def get_plan(
    plan_id: str, client_id: Client, broker: BrokerDep, wait: Wait = 0
) -> dict[str, Any]:
    def get() -> dict[str, Any] | None:
        try:
            return broker.views.plan(client_id, plan_id)
        except NotFound:
            return None

    return await wait_for(get, wait, lambda p: p["status"] in TERMINAL, f"no plan {plan_id!r}")


@router.post(
    "/v1/plans/{plan_id}/undo", responses=answers(*AUTHENTICATED, 404, 409, 422, 503, plan=True)
)
def undo_plan(plan_id: str, client_id: Client, broker: BrokerDep) -> JSONResponse:
    return plan_response(broker.submit_plan_undo(client_id, plan_id))


@router.get("/v1/actions/{action_id}", responses=answers(*AUTHENTICATED, 404, 422))
def action(action_id: str, client_id: Client, broker: BrokerDep) -> dict[str, Any]:
    return broker.views.action(client_id, action_id)


@router.post(
    "/v1/actions/{action_id}/undo", responses=answers(*AUTHENTICATED, 404, 409, 422, 503, plan=True)
)
def undo(action_id: str, client_id: Client, broker: BrokerDep) -> JSONResponse:
    return plan_response(broker.submit_undo(client_id, action_id))
