"""The LAN API (FastAPI). Paths and fields here are the public contract.

Every error is JSON ``{"code", "reason"}`` with a 4xx/5xx status, never a
stack trace (``errors.py``). Request bodies are size-limited before they are
parsed, each caller is rate-limited (``limits.py``), and every ``/v1`` call
but pairing needs ``Authorization: Bearer <credential>`` (``deps.py``). The
routes are in ``routes/``, one module per part of the contract; ``/mcp``
serves the same contract as MCP tools (``routes/mcp.py``).
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from appliance import __version__
from appliance.api.bodies import proper_text
from appliance.api.errors import install_handlers
from appliance.api.limits import BodyLimit, RateLimiter
from appliance.api.routes import (
    approvals,
    health,
    history,
    mcp,
    owner,
    pairing,
    plans,
    plugins,
    proofs,
    review,
    shares,
    tasks,
)
from appliance.broker.service import Broker
from appliance.console.mount import mount


def create_app(broker: Broker, *, secure: bool | None = None) -> FastAPI:
    """The LAN API and the box's console. ``secure``: served over TLS (the
    console's cookies are ``Secure``); default: outside development."""
    limits = broker.config.limits
    app = FastAPI(
        title="Safe agent appliance",
        version=__version__,
        description="LAN API of the appliance broker. Every /v1 call except pairing needs "
        "`Authorization: Bearer <credential>` (or the box's console's session).",
    )
    app.state.broker = broker
    app.state.limiter = RateLimiter(limits.requests_per_second, limits.burst)
    install_handlers(app)
    routes = (health, pairing, plans, history, plugins, tasks, approvals, review, proofs, shares)
    for module in (*routes, owner):
        app.include_router(module.router, dependencies=[Depends(proper_text)])
    mcp.install(app)  # /mcp: the same contract as MCP tools (streamable HTTP)
    mount(app, broker, secure=not broker.config.dev if secure is None else secure)
    app.add_middleware(BodyLimit, limit=limits.body_bytes)
    return app
