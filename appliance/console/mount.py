"""Mounting the console on the app: its sessions, its routes, its headers."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from appliance.api.errors import error_response
from appliance.broker.service import Broker
from appliance.console import pages, signin
from appliance.console.render import SecurityHeaders
from appliance.console.sessions import ConsoleSessions, SignInFirst


async def _sign_in_first(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInFirst)
    if request.method == "GET" and not request.url.path.startswith("/v1/"):
        return RedirectResponse("/pair", status_code=303)
    return error_response(exc.status, exc.code, exc.reason)


def mount(app: FastAPI, broker: Broker, *, secure: bool) -> None:
    """Serve the console from ``app``; ``secure``: the box speaks TLS."""
    app.state.sessions = ConsoleSessions(broker, secure=secure)
    app.add_exception_handler(SignInFirst, _sign_in_first)
    app.include_router(signin.router)
    app.include_router(pages.router)
    app.add_middleware(SecurityHeaders)
