"""``/mcp``: the box's MCP tools over streamable HTTP, for a paired desktop's agent.

The endpoint answers only a request that carries a paired credential
(``Authorization: Bearer``, the same check and rate limit as every ``/v1``
call); without one it answers 401 before the MCP server sees a byte. The
tools (``appliance.mcp.tools``, the same ones ``appliance mcp`` serves over
stdio) then act through this very LAN API, in process, with that caller's
credential and address: whatever the LAN API refuses that credential, the
tools are refused too.

Stateless: each HTTP request stands alone (no MCP session to hijack or
leak between clients); answers stream as server-sent events, so a tool
that waits for a press can report progress.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from appliance.api.contract import API_VERSION
from appliance.api.deps import current_client
from appliance.api.errors import error_response
from appliance.client import AsyncApplianceClient
from appliance.errors import ApplianceError
from appliance.mcp.tools import build_server

PATH = "/mcp"
IN_PROCESS = "http://appliance.in-process"
# The SDK logs each session's start and stop at INFO: not the broker's business.
logging.getLogger("mcp").setLevel(logging.WARNING)


class McpEndpoint:
    """The ASGI endpoint at ``/mcp``: authenticate, then the MCP server."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.server = build_server(self.box_for)
        # The bearer credential, not the Host header, is what keeps a web page
        # (DNS rebinding) out; the box answers under whatever name the LAN uses.
        self.server.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager = self.server.session_manager
        self.running = False

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self.manager.run():
            self.running = True
            try:
                yield
            finally:
                self.running = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await run_in_threadpool(current_client, Request(scope))
        except ApplianceError as e:
            response = error_response(e.status, e.code, e.reason)
            if e.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        if not self.running:
            await error_response(503, "unavailable", "the MCP endpoint is not running")(
                scope, receive, send
            )
            return
        await self.manager.handle_request(scope, receive, send)

    @asynccontextmanager
    async def box_for(self, ctx: Context) -> AsyncIterator[AsyncApplianceClient]:
        """The LAN API in process, as the caller of this MCP request."""
        headers = ctx.headers or {}
        scheme, _, credential = str(headers.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise ToolError("unauthorized: this call needs Authorization: Bearer <credential>")
        request: Any = ctx.request_context.request
        client_ip = request.client.host if getattr(request, "client", None) else "unknown"
        box = AsyncApplianceClient(
            IN_PROCESS,
            credential.strip(),
            transport=httpx.ASGITransport(app=self.app, client=(client_ip, 0)),
        )
        box.api_version = API_VERSION  # the same box: nothing to negotiate
        try:
            yield box
        finally:
            await box.aclose()


def install(app: FastAPI) -> None:
    """Serve ``/mcp`` on ``app``, its session manager running with the app."""
    endpoint = McpEndpoint(app)
    app.router.routes.append(Route(PATH, endpoint=endpoint, methods=["GET", "POST", "DELETE"]))
    before = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with endpoint.run(), before(a) as state:
            yield state

    app.router.lifespan_context = lifespan
