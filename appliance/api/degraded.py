"""Fail closed, but say why: what the LAN API serves when the broker cannot
start (no TPM, TPM lockout, a broken policy, an audit log that does not
verify, no approval panel whose button and light can be opened).
``/healthz`` answers 503 with the reason; every other call answers
503 with the same reason; nothing privileged can happen. ``Switch`` lets
``appliance up`` swap in the real app once a retry succeeds.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from appliance.api.errors import error_response


def unavailable_app(reason: str) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            body = {"status": "unavailable", "problems": [reason], "code": "unavailable"}
            response = JSONResponse(body, status_code=503)
        else:
            response = error_response(503, "unavailable", f"the appliance cannot serve: {reason}")
        await response(scope, receive, send)

    return app


class Switch:
    """An ASGI app that forwards to whichever app is current."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
