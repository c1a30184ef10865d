"""What the OpenAPI document says besides the routes: each route's refusals
(``responses=answers(...)``), the error body they share, and the bearer
security scheme.

Every status a route can answer is listed on it, so a desktop (or a fuzzer)
holding the document knows each answer it may get; the adversarial suite
runs schemathesis over the served document and fails on any status or body
the document does not declare.
"""

from __future__ import annotations

from typing import Any

from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

# The credential a paired desktop sends. auto_error=False: the box answers a
# missing or unknown credential itself (401 with its own {code, reason} body,
# see deps.current_client); this object only puts the scheme in the document.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="credential",
    bearerFormat="<client_id>.<secret>",
    description="The credential `GET /v1/pairings/{pairing_id}` hands out once, after "
    "the owner pressed the box's button.",
)


class ErrorBody(BaseModel):
    """Every refusal: a machine-readable code and a reason a person can act on."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="machine-readable, e.g. unauthorized, rate_limited")
    reason: str = Field(description="what went wrong and what to do about it")


_WHY = {
    400: "The body is not JSON, not UTF-8, or not proper Unicode (a lone surrogate).",
    401: "No credential, or one the box does not know or revoked.",
    403: "Refused by the shares' scope or the policy, or pairing is closed.",
    404: "Nothing by that id or name.",
    409: "The request conflicts with what exists (already undone, not undoable).",
    410: "Gone: the pairing's credential was already delivered.",
    413: "The body is over the box's limit.",
    422: "A field is missing, of the wrong type, or out of range; the reason names it.",
    429: "Too many requests from this caller, a full approval queue, or a lockout.",
    501: "This box cannot do it (no TPM).",
    502: "The model agent answered with something that is not a plan.",
    503: "A part the request needs (policy, TPM, model agent) is unavailable.",
}
_ERROR = {"$ref": "#/components/schemas/ErrorBody"}
_PLAN = {"type": "object", "required": ["plan_id", "status"]}

# The statuses every authenticated route may answer besides its own.
AUTHENTICATED = (401, 429)
# ... and every route that reads a JSON body.
WITH_BODY = (400, 413, 422)


def _link(path: str, method: str, **parameters: str) -> dict[str, Any]:
    ref = "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method
    return {"operationRef": ref, "parameters": parameters}


# Where an answer's ids lead (OpenAPI links): a desktop, or the fuzzer,
# follows a plan to its approval, its undo and its first action.
PLAN_LINKS = {
    "GetPlan": _link("/v1/plans/{plan_id}", "get", plan_id="$response.body#/plan_id"),
    "UndoPlan": _link("/v1/plans/{plan_id}/undo", "post", plan_id="$response.body#/plan_id"),
    "GetApproval": _link(
        "/v1/approvals/{approval_id}", "get", approval_id="$response.body#/approval_id"
    ),
    "GetAction": _link(
        "/v1/actions/{action_id}", "get", action_id="$response.body#/intents/0/action_id"
    ),
    "UndoAction": _link(
        "/v1/actions/{action_id}/undo", "post", action_id="$response.body#/intents/0/action_id"
    ),
}
TASK_LINKS = {
    "GetTask": _link("/v1/tasks/{task_id}", "get", task_id="$response.body#/task_id"),
    "TaskEvents": _link("/v1/tasks/{task_id}/events", "get", task_id="$response.body#/task_id"),
}
PAIRING_LINKS = {
    "GetPairing": _link(
        "/v1/pairings/{pairing_id}", "get", pairing_id="$response.body#/pairing_id"
    ),
}


def answers(*statuses: int, plan: bool = False) -> dict[int | str, Any]:
    """The ``responses=`` of a route: each status with why and the error body.

    ``plan``: the route answers with a plan, whose status sets the HTTP
    status: 202 while it waits for the owner's press or runs, 403 when the
    policy denied it (so a 403's body is the plan or a refusal)."""
    out: dict[int | str, Any] = {}
    if plan:
        statuses = (*statuses, 403)
        out[200] = {"description": "The plan ran: done, or failed.", "links": PLAN_LINKS}
        out[202] = {
            "description": "The plan waits for the owner's press, or is running.",
            "content": {"application/json": {"schema": _PLAN}},
            "links": PLAN_LINKS,
        }
    for status in sorted(set(statuses)):
        if plan and status == 403:
            out[status] = {
                "description": _WHY[status] + " Or the plan, when the policy denied it.",
                "content": {"application/json": {"schema": {"anyOf": [_ERROR, _PLAN]}}},
            }
        else:
            out[status] = {"description": _WHY[status], "model": ErrorBody}
    return out
