"""What a route depends on: the broker, the caller's address, the paired
client behind ``Authorization: Bearer`` (or the box's own console, signed
in with its session cookie), the owner, and waiting for a state to settle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials

from appliance.api.limits import RateLimiter
from appliance.api.openapi import bearer
from appliance.broker.service import Broker
from appliance.errors import ApplianceError, NotFound, Unauthorized

MAX_WAIT_S = 60.0


def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def get_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def caller_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class Sessions(Protocol):
    """The console's sessions (``appliance.console.sessions``), as the API
    sees them: the client a request's session cookie signs in, None when it
    carries none; refused (401) when the session is unknown or over, and
    (403) when a call that changes something lacks its CSRF token."""

    def client_of(self, request: Request) -> str | None: ...


def current_client(
    request: Request,
    # Only for the OpenAPI document (the bearer security scheme); the header
    # is read below, so a refusal stays the box's own 401 {code, reason}.
    scheme_doc: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> str:
    """The paired client behind ``Authorization: Bearer``, or the box's
    console behind its session cookie; rate-limited per client."""
    broker, limiter = get_broker(request), get_limiter(request)
    header = request.headers.get("authorization", "")
    sessions: Sessions | None = getattr(request.app.state, "sessions", None)
    if not header and sessions is not None:
        client_id = sessions.client_of(request)
        if client_id is not None:
            limiter.take(client_id)
            return client_id
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


def current_owner(request: Request, client_id: Annotated[str, Depends(current_client)]) -> str:
    """The caller, when its grant makes it the box's owner (the console)."""
    record = get_broker(request).evaluator.requester(client_id)
    if record is None or not record.grant.owner:
        raise ApplianceError(
            "this call is for the box's own console (an owner grant, given only at the box)",
            code="owner_only",
            status=403,
        )
    return client_id


BrokerDep = Annotated[Broker, Depends(get_broker)]
Client = Annotated[str, Depends(current_client)]
Owner = Annotated[str, Depends(current_owner)]
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
