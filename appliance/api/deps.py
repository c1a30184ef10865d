"""What a route depends on: the broker, the caller's address, the paired
client behind ``Authorization: Bearer``, and waiting for a state to settle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials

from appliance.api.limits import RateLimiter
from appliance.api.openapi import bearer
from appliance.broker.service import Broker
from appliance.errors import NotFound, Unauthorized

MAX_WAIT_S = 60.0


def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def get_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def caller_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def current_client(
    request: Request,
    # Only for the OpenAPI document (the bearer security scheme); the header
    # is read below, so a refusal stays the box's own 401 {code, reason}.
    scheme_doc: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> str:
    """The paired client behind ``Authorization: Bearer``; rate-limited per client."""
    broker, limiter = get_broker(request), get_limiter(request)
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential:
        limiter.take(f"ip:{caller_ip(request)}")
        raise Unauthorized(
            "this call needs Authorization: Bearer <credential>; pair first with POST /v1/pairings"
        )
    try:
        client_id = broker.clients.authenticate(credential.strip())
    except Unauthorized:
        limiter.take(f"ip:{caller_ip(request)}")
        raise
    limiter.take(client_id)
    return client_id


BrokerDep = Annotated[Broker, Depends(get_broker)]
Client = Annotated[str, Depends(current_client)]
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT_S)]


async def wait_for(
    get: Callable[[], dict[str, Any] | None],
    wait: float,
    done: Callable[[dict[str, Any]], bool],
    missing: str,
) -> dict[str, Any]:
    """``get()`` until ``done`` or ``wait`` seconds; NotFound when it is None."""
    deadline = time.monotonic() + wait
    while True:
        value = await run_in_threadpool(get)
        if value is None:
            raise NotFound(missing)
        if done(value) or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(0.05)
