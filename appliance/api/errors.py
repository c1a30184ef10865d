"""Every error the LAN API answers is JSON ``{"code", "reason"}`` with a
4xx/5xx status, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.errors import ApplianceError

log = logging.getLogger("appliance.api")


def error_response(status: int, code: str, reason: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "reason": reason, **extra}, status_code=status)


async def _appliance_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApplianceError)
    return error_response(exc.status, exc.code, exc.reason)


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    details = [
        {
            "where": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
            # "Value error, " is how pydantic prefixes a validator's own reason.
            "problem": str(e.get("msg", "")).removeprefix("Value error, "),
        }
        for e in errors
    ]
    first = details[0] if details else {"where": "", "problem": "invalid"}
    return error_response(
        422, "invalid_request", f"{first['where'] or 'body'}: {first['problem']}", errors=details
    )


_HTTP_CODES = {
    400: "malformed_body",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}
_HTTP_REASONS = {
    # FastAPI's words for a body it could not read as JSON (not UTF-8, say).
    "There was an error parsing the body": "the request body cannot be read as JSON "
    "(not UTF-8, or nested too deeply)",
}


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    reason = _HTTP_REASONS.get(str(exc.detail), str(exc.detail))
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        reason = f"{request.method} is not allowed here; this path answers {allowed}"
    response = error_response(exc.status_code, code, reason)
    # 405 carries Allow (the methods the path answers), as HTTP requires.
    response.headers.update(exc.headers or {})
    return response


async def _crash(_: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error", exc_info=exc)
    return error_response(500, "internal", "internal error; the broker's log has the details")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApplianceError, _appliance_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _crash)
