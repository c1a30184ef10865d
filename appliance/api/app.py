"""The LAN API (FastAPI). Paths and fields here are the public contract.

Every error is JSON ``{"code", "reason"}`` with a 4xx/5xx status, never a
stack trace. Request bodies are size-limited before they are parsed, each
caller is rate-limited, and every ``/v1`` call but pairing needs
``Authorization: Bearer <credential>``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance import __version__
from appliance.broker.plans import TERMINAL
from appliance.broker.service import Broker
from appliance.broker.tasks import TERMINAL as TASK_TERMINAL
from appliance.errors import ApplianceError, NotFound, Unauthorized
from appliance.intents import Plan, plan_schema

log = logging.getLogger("appliance.api")

MAX_WAIT_S = 60.0
SSE_MAX_S = 600.0  # an event stream ends after this, whatever the task's state
STATUS_FOR_PLAN = {
    "done": 200,
    "pending_approval": 202,
    "denied": 403,
    "failed": 200,
    "expired": 200,
    "running": 202,
}


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    # Optional: each move's destination folder is this value, read from inside
    # the file by the quarantined extractor (e.g. {"field": "year", "type": "integer"}).
    from_content: dict[str, str] | None = None


class PairingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class BodyLimit:
    """Refuse bodies over ``limit`` bytes before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _too_large(self.limit, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # An HTTPException, so FastAPI's body parsing passes it on as is.
                    raise StarletteHTTPException(413, _too_large_reason(self.limit))
            return message

        await self.app(scope, limited, send)


def _too_large_reason(limit: int) -> str:
    return f"request bodies are limited to {limit} bytes"


async def _too_large(limit: int, send: Send) -> None:
    response = _error(413, "body_too_large", _too_large_reason(limit))
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _error(status: int, code: str, reason: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "reason": reason, **extra}, status_code=status)


class RateLimiter:
    """A token bucket per caller: ``rate`` per second, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                raise ApplianceError(
                    f"too many requests from {key}: at most {self.rate:g} per second",
                    code="rate_limited",
                    status=429,
                )
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > 10_000:  # bounded memory against many callers
                self._buckets.clear()


def caller_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def current_client(request: Request) -> str:
    """The paired client behind ``Authorization: Bearer``; rate-limited per client."""
    broker: Broker = request.app.state.broker
    limiter: RateLimiter = request.app.state.limiter
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


Client = Annotated[str, Depends(current_client)]


def create_app(broker: Broker) -> FastAPI:
    limits = broker.config.limits
    app = FastAPI(
        title="Safe agent appliance",
        version=__version__,
        description="LAN API of the appliance broker. Every /v1 call except pairing needs "
        "`Authorization: Bearer <credential>`.",
    )
    app.state.broker = broker
    limiter = RateLimiter(limits.requests_per_second, limits.burst)
    app.state.limiter = limiter

    @app.exception_handler(ApplianceError)
    async def _appliance_error(_: Request, exc: ApplianceError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "malformed_json", "the request body is not valid JSON")
        details = [
            {
                "where": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                "problem": e.get("msg", ""),
            }
            for e in errors
        ]
        first = details[0] if details else {"where": "", "problem": "invalid"}
        return _error(
            422,
            "invalid_request",
            f"{first['where'] or 'body'}: {first['problem']}",
            errors=details,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error", exc_info=exc)
        return _error(500, "internal", "internal error; the broker's log has the details")

    # -------------------------------------------------------------- open calls
    @app.get("/healthz")
    def healthz() -> JSONResponse:
        health = broker.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    @app.post("/v1/pairings", status_code=202)
    def pair(body: PairingRequest, request: Request) -> dict[str, Any]:
        limiter.take(f"ip:{caller_ip(request)}")
        return broker.request_pairing(body.name, caller_ip(request))

    @app.get("/v1/pairings/{pairing_id}")
    def pairing(pairing_id: str, request: Request) -> dict[str, Any]:
        limiter.take(f"ip:{caller_ip(request)}")
        return broker.pairing_result(pairing_id)

    # -------------------------------------------------------------- plans
    @app.post("/v1/intents")
    def submit(plan: Plan, client_id: Client) -> JSONResponse:
        if len(plan.intents) > limits.intents_per_plan:
            raise ApplianceError(
                f"a plan holds at most {limits.intents_per_plan} intents",
                code="plan_too_large",
                status=422,
            )
        out = broker.submit(client_id, plan.intents)
        return JSONResponse(out, status_code=STATUS_FOR_PLAN.get(out["status"], 200))

    @app.get("/v1/intents/schema")
    def schema(_: Client) -> dict[str, Any]:
        return plan_schema()

    @app.get("/v1/plans/{plan_id}")
    async def get_plan(
        plan_id: str, _: Client, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0
    ) -> dict[str, Any]:
        return await _wait_for(
            lambda: broker.plans.public(plan_id),
            wait,
            lambda p: p["status"] in TERMINAL,
            f"no plan {plan_id!r}",
        )

    @app.post("/v1/plans/{plan_id}/undo")
    def undo_plan(plan_id: str, client_id: Client) -> JSONResponse:
        out = broker.submit_plan_undo(client_id, plan_id)
        return JSONResponse(out, status_code=STATUS_FOR_PLAN.get(out["status"], 200))

    # -------------------------------------------------------------- tasks
    @app.post("/v1/tasks", status_code=202)
    def task(body: TaskRequest, client_id: Client) -> dict[str, Any]:
        """Free text: the box's model plans it, then it takes the path of any plan."""
        return broker.submit_task(client_id, body.text, body.from_content)

    @app.get("/v1/tasks/{task_id}")
    async def get_task(
        task_id: str, _: Client, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0
    ) -> dict[str, Any]:
        def get() -> dict[str, Any] | None:
            try:
                return broker.task_public(task_id)
            except NotFound:
                return None

        return await _wait_for(
            get, wait, lambda t: t["status"] in TASK_TERMINAL, f"no task {task_id!r}"
        )

    @app.get("/v1/tasks/{task_id}/events")
    async def task_events(task_id: str, _: Client) -> StreamingResponse:
        """Server-sent events: each step of the task as it happens, until it ends."""
        first = await run_in_threadpool(broker.task_public, task_id)

        async def stream() -> AsyncIterator[bytes]:
            sent = 0
            task = first
            deadline = time.monotonic() + SSE_MAX_S
            while True:
                for event in task["events"][sent:]:
                    yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n".encode()
                sent = len(task["events"])
                if task["status"] in TASK_TERMINAL or time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.1)
                task = await run_in_threadpool(broker.task_public, task_id)

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -------------------------------------------------------------- approvals
    @app.get("/v1/approvals")
    def approvals(client_id: Client) -> dict[str, Any]:
        # "lockout": whether this caller is locked out of approvals, and how long.
        return {
            "approvals": broker.approvals.public_list(),
            "lockout": broker.approvals.lockout(client_id),
        }

    @app.get("/v1/approvals/{approval_id}")
    async def approval(
        approval_id: str, _: Client, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0
    ) -> dict[str, Any]:
        def get() -> dict[str, Any] | None:
            try:
                return broker.approvals.public(approval_id)
            except NotFound:
                return None

        return await _wait_for(
            get, wait, lambda a: a["status"] != "pending", f"no approval {approval_id!r}"
        )

    # -------------------------------------------------------------- actions
    @app.get("/v1/actions/{action_id}")
    def action(action_id: str, _: Client) -> dict[str, Any]:
        from appliance.broker.plans import public_action

        row = broker.plans.action(action_id)
        if row is None:
            raise NotFound(f"no action {action_id!r}")
        return {**public_action(row), "plan_id": row["plan_id"]}

    @app.post("/v1/actions/{action_id}/undo")
    def undo(action_id: str, client_id: Client) -> JSONResponse:
        out = broker.submit_undo(client_id, action_id)
        return JSONResponse(out, status_code=STATUS_FOR_PLAN.get(out["status"], 200))

    # -------------------------------------------------------------- audit, keys
    @app.get("/v1/audit")
    def audit(
        _: Client,
        start: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        entries = broker.audit.entries(start, limit)
        nxt = start + len(entries)
        return {
            "entries": entries,
            "size": broker.audit.size,
            "next": nxt if nxt < broker.audit.size else None,
        }

    @app.get("/v1/audit/checkpoint")
    def checkpoint(_: Client) -> dict[str, Any]:
        return broker.audit.latest_checkpoint()

    @app.get("/v1/attestation")
    def attest(
        _: Client,
        nonce: Annotated[
            str, Query(pattern="^[0-9a-fA-F]{16,128}$", description="hex, 8-64 bytes")
        ],
    ) -> dict[str, Any]:
        """TPM2_Quote and TPM2_Certify with the caller's nonce, for the desktop to check."""
        return broker.attestation(bytes.fromhex(nonce))

    @app.get("/v1/keys")
    def keys(_: Client) -> dict[str, Any]:
        """The device key and this start's boot statement: a desktop that pinned
        the device key follows the chain device key -> statement -> token root."""
        root = broker.keystore.token_root().public_key
        return {
            "signer": broker.keystore.label,
            "unsafe": broker.keystore.unsafe,
            "device_key": {
                "kid": broker.signer.key_id,
                "alg": "ES256",
                "pem": broker.signer.public_key_pem().decode(),
            },
            "statement": broker.statement,
            "token_root": {
                "alg": "Ed25519",
                "public_key": base64.b64encode(bytes(root.to_bytes())).decode(),
            },
            "epoch": broker.tokens.epoch(),
            "boot_count": broker.keystore.boot_count,
        }

    app.add_middleware(BodyLimit, limit=limits.body_bytes)
    return app


async def _wait_for(get: Any, wait: float, done: Any, missing: str) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    while True:
        value = await run_in_threadpool(get)
        if value is None:
            raise NotFound(missing)
        if done(value) or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(0.05)
