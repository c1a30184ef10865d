"""The request as the box renders it, and what changes, live.

``GET /v1/approvals/{id}/review`` is the whole of what a press would do,
built by the box from its own state (``appliance.console.review``): what the
console's Now page shows. ``GET /v1/events`` streams the approval line as
the caller may see it (server-sent events), and ``POST
/v1/approvals/{id}/seen`` is the console saying it has shown a request's
digest (trusted arming): only the owner's console may say it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, StringConstraints

from appliance.api.deps import BrokerDep, Client, Owner
from appliance.api.openapi import AUTHENTICATED, WITH_BODY, answers
from appliance.broker.service import Broker
from appliance.console.review import review

router = APIRouter()

EVENTS_MAX_S = 600.0  # a stream ends after this; EventSource reconnects by itself
EVENTS_TICK_S = 0.2
HEARTBEAT_S = 15.0


class Seen(BaseModel):
    model_config = ConfigDict(extra="forbid")
    digest: Annotated[str, StringConstraints(min_length=1, max_length=128)]


def approval_review(broker: Broker, client_id: str, approval_id: str) -> dict[str, Any]:
    return review(broker, broker.views.approval(client_id, approval_id))


@router.get("/v1/approvals/{approval_id}/review", responses=answers(*AUTHENTICATED, 404, 422))
def get_review(approval_id: str, client_id: Client, broker: BrokerDep) -> dict[str, Any]:
    """Everything a press on this request would do, rendered by the box."""
    return approval_review(broker, client_id, approval_id)


@router.post(
    "/v1/approvals/{approval_id}/seen", responses=answers(*AUTHENTICATED, *WITH_BODY, 403, 404)
)
def seen(approval_id: str, body: Seen, owner: Owner, broker: BrokerDep) -> dict[str, Any]:
    """The owner's console has shown this request with this digest: a press
    may approve it now (after the arming delay). 404 when the request on the
    panel is another one, or has another digest."""
    broker.approvals.seen(approval_id, body.digest, by=owner)
    return broker.views.approval(owner, approval_id)


def line(broker: Broker, client_id: str) -> dict[str, Any]:
    """The approval line as ``client_id`` may see it: what ``/v1/events``
    sends each time it changes."""
    out: dict[str, Any] = {
        "approvals": broker.views.approvals_of(client_id),
        "recent": broker.views.approvals_recent(client_id),
        "lockout": broker.approvals.lockout(client_id),
    }
    record = broker.evaluator.requester(client_id)
    if record is not None and record.grant.owner:
        out["lockouts"] = broker.approvals.lockouts()
        out["pairing_window_s"] = broker.approvals.pairing_window()
    return out


def _changes(state: dict[str, Any]) -> str:
    """What makes an update worth sending (not the clocks counting down)."""
    keep = ("approval_id", "state", "seen_on_console", "plan_status", "position", "status")
    return json.dumps(
        {
            "a": [{k: a.get(k) for k in keep} for a in state["approvals"]],
            "r": [{k: a.get(k) for k in keep} for a in state["recent"]],
            "l": state["lockout"] is not None,
            "ls": [x["requester"] for x in state.get("lockouts", [])],
        },
        sort_keys=True,
    )


_LINE = {
    "type": "object",
    "required": ["approvals", "recent", "lockout"],
    "properties": {
        "approvals": {"type": "array"},
        "recent": {"type": "array"},
        "lockout": {"type": ["object", "null"]},
    },
}


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "With `Accept: text/event-stream`: server-sent events, "
            "`approvals` with the line now and again each time it changes (the stream "
            "ends after 10 minutes; EventSource reconnects). Otherwise the line now, once.",
            "content": {
                "text/event-stream": {"schema": _LINE},
                "application/json": {"schema": _LINE},
            },
        },
        **answers(*AUTHENTICATED),
    },
)
async def events(request: Request, client_id: Client, broker: BrokerDep) -> Response:
    """Server-sent events: ``approvals`` with the line (:func:`line`) now, and
    again whenever a request arrives, is shown, seen, decided, or its plan
    moves on. A caller that does not ask for ``text/event-stream`` gets the
    line now, once, as JSON."""
    first = await run_in_threadpool(line, broker, client_id)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return JSONResponse(first, headers={"Cache-Control": "no-store"})

    async def stream() -> AsyncIterator[bytes]:
        state, last = first, ""
        deadline = time.monotonic() + EVENTS_MAX_S
        quiet = time.monotonic()
        while time.monotonic() < deadline:
            changes = _changes(state)
            if changes != last:
                last, quiet = changes, time.monotonic()
                yield f"event: approvals\ndata: {json.dumps(state)}\n\n".encode()
            elif time.monotonic() - quiet > HEARTBEAT_S:
                quiet = time.monotonic()
                yield b": still here\n\n"
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENTS_TICK_S)
            if broker.evaluator.requester(client_id) is None:
                return  # revoked, or its pairing ended: the stream ends with it
            state = await run_in_threadpool(line, broker, client_id)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
