"""Request bodies at the edge: JSON whose every string is proper Unicode.

JSON may spell a lone surrogate (``"\\udcae"``): half of a UTF-16 pair,
which is no character at all. Python's JSON reader lets it through, and the
first thing that encodes the string (a digest, the audit log, a file name)
fails deep in the broker. So every body is checked once, here, before any
route sees it, and answered with a 400 that names where the bad string is.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from appliance.errors import ApplianceError

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """Where the first string holding a lone surrogate is in a parsed JSON
    value (keys included), and which; None when every string is proper."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        where, item = todo.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return f"{where or 'the body'} holds a lone surrogate U+{ord(found[0]):04X}"
        elif isinstance(item, dict):
            for key in item:
                found = _SURROGATE.search(key)
                if found:
                    return f"a field name in {where or 'the body'} holds a lone surrogate"
            todo.extend((_join(where, k), v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            todo.extend((_join(where, i), v) for i, v in reversed(list(enumerate(item))))
    return None


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


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
