"""Tasks in plain words: the box's model plans them, then they take the path
of any plan; progress by polling or as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from appliance.api.deps import BrokerDep, Client, Wait, wait_for
from appliance.api.openapi import AUTHENTICATED, TASK_LINKS, WITH_BODY, answers
from appliance.broker.tasks import FIELD_TYPES, TERMINAL, TEXT_MAX
from appliance.errors import NotFound
from appliance.names import class_of

router = APIRouter()

SSE_MAX_S = 600.0  # an event stream ends after this, whatever the task's state


# A task's text holds at least one character that is not a space.
_NOT_ONLY_SPACES = class_of((c for c in map(chr, range(0x3001)) if c.isspace()), negate=True)
_FROM_CONTENT: dict[str, Any] = {
    "properties": {
        "field": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
        "type": {"type": "string", "enum": list(FIELD_TYPES)},
    },
    "required": ["field", "type"],
    "additionalProperties": False,
}


# One server-sent event: its name (planning, planned, running, done, failed...)
# and the step as JSON.
_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["event", "data"],
}


class TaskRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "list what is in the inbox"},
                {
                    "text": "sort the inbox into folders by year",
                    "from_content": {"field": "year", "type": "integer"},
                },
            ]
        },
    )
    text: str = Field(
        min_length=1, max_length=TEXT_MAX, json_schema_extra={"pattern": _NOT_ONLY_SPACES}
    )
    # Optional: each move's destination folder is this value, read from inside
    # the file by the quarantined extractor (e.g. {"field": "year", "type": "integer"}).
    from_content: dict[str, str] | None = Field(default=None, json_schema_extra=_FROM_CONTENT)


@router.post(
    "/v1/tasks",
    status_code=202,
    responses={202: {"links": TASK_LINKS}, **answers(*AUTHENTICATED, *WITH_BODY)},
)
def task(body: TaskRequest, client_id: Client, broker: BrokerDep) -> dict[str, Any]:
    """Free text: the box's model plans it, then it takes the path of any plan."""
    return broker.tasks.start(client_id, body.text, body.from_content)


@router.get("/v1/tasks/{task_id}", responses=answers(*AUTHENTICATED, 404, 422))
async def get_task(
    task_id: str, client_id: Client, broker: BrokerDep, wait: Wait = 0
) -> dict[str, Any]:
    def get() -> dict[str, Any] | None:
        try:
            return broker.views.task(client_id, task_id)
        except NotFound:
            return None

    return await wait_for(get, wait, lambda t: t["status"] in TERMINAL, f"no task {task_id!r}")


@router.get(
    "/v1/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events, one per step of the task, until it ends.",
            # Before OpenAPI 3.2 (itemSchema), "schema" describes each event.
            "content": {"text/event-stream": {"schema": _EVENT}},
        },
        **answers(*AUTHENTICATED, 404, 422),
    },
)
async def task_events(task_id: str, client_id: Client, broker: BrokerDep) -> StreamingResponse:
    """Server-sent events: each step of the task as it happens, until it ends."""
    first = await run_in_threadpool(broker.views.task, client_id, task_id)

    async def stream() -> AsyncIterator[bytes]:
        sent = 0
        task = first
        deadline = time.monotonic() + SSE_MAX_S
        while True:
            for event in task["events"][sent:]:
                yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n".encode()
            sent = len(task["events"])
            if task["status"] in TERMINAL or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.1)
            task = await run_in_threadpool(broker.views.task, client_id, task_id)

    return StreamingResponse(stream(), media_type="text/event-stream")
