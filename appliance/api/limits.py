"""What every request costs the box, bounded: body size before parsing, and
a token bucket per caller."""

from __future__ import annotations

import threading
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.errors import error_response
from appliance.errors import ApplianceError


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
                response = error_response(413, "body_too_large", _too_large(self.limit))
                await response({"type": "http"}, _no_receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # An HTTPException, so FastAPI's body parsing passes it on as is.
                    raise StarletteHTTPException(413, _too_large(self.limit))
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> str:
    return f"request bodies are limited to {limit} bytes"


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


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
