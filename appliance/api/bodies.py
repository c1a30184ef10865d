"""Request bodies at the edge: JSON whose every string is proper Unicode.

JSON may spell a lone surrogate (``"\\udcae"``): half of a UTF-16 pair,
which is no character at all. Python's JSON reader lets it through, and the
first thing that encodes the string (a digest, the audit log, a file name)
fails deep in the broker. So every body is checked once, here, before any
route sees it, and answered with a 400 that names where the bad string is.
"""

from __future__ import annotations

from fastapi import Request

from appliance.errors import ApplianceError
from appliance.names import lone_surrogate


async def proper_text(request: Request) -> None:
    """A route dependency: refuse a JSON body with a lone surrogate anywhere.

    The body was read and parsed already (FastAPI does that before any
    dependency, and the request keeps it), so this costs one walk over it."""
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is None:
        return  # the route reads no body
    try:
        body = await request.json()
    except ValueError:
        return  # not JSON: the route's own validation answers that
    problem = lone_surrogate(body)
    if problem:
        raise ApplianceError(
            f"the request body is not valid Unicode: {problem}; send text as UTF-8 "
            "(and binary file content as base64)",
            code="invalid_unicode",
            status=400,
        )
