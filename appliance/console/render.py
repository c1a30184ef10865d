"""How the console's pages are made and served: Jinja2 templates and static
files inside the package (no CDN: the console works with no internet), and
the headers every answer carries.

Every value reaches a page through Jinja2's autoescaping; names are also
escaped for what HTML cannot show (``appliance.names.escaped``) and flagged. The pages
run no inline script: the Content-Security-Policy allows scripts, styles and
connections only from the box itself, and no page may be framed.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.names import escaped

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


class SecurityHeaders:
    """Adds the console's security headers to every answer of the app (the
    API's JSON too: harmless there, and nothing can be framed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in have]
                if b"cache-control" not in have:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, with_headers)


def _when(t: float | None) -> str:
    if t is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


ENV = Environment(
    loader=PackageLoader("appliance.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["when"] = _when
ENV.filters["size"] = _size
ENV.filters["esc"] = escaped
ENV.filters["esc_text"] = lambda text: escaped(text, keep="\n\t")


def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page of the console, rendered by the box."""
    html = ENV.get_template(template).render(request=request, **values)
    return HTMLResponse(html, status_code=status)


def static(name: str) -> Response:
    """One of the console's own files (a fixed list: nothing else is served)."""
    kind = STATIC.get(name)
    if kind is None:
        return Response("not found", status_code=404, media_type="text/plain")
    data = resources.files("appliance.console").joinpath("static", name).read_bytes()
    return Response(data, media_type=kind, headers={"cache-control": "no-cache"})
