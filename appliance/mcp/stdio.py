"""``appliance mcp``: the MCP server a desktop's agent starts over stdio.

It talks to the paired box over the pinned LAN API with this desktop's
credential (the file ``appliance pair`` wrote). It starts even when the
desktop is not paired, so the agent can tell its user what to do: every
tool then answers with that reason.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from appliance.client import AsyncApplianceClient, ClientError, Credentials
from appliance.mcp.tools import build_server


def serve_stdio(credentials: Path) -> int:
    # stdout carries the protocol: everything else goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="appliance mcp: %(message)s")
    box: AsyncApplianceClient | None = None
    problem = ""
    try:
        box = AsyncApplianceClient.from_credentials(Credentials.load(credentials))
    except ClientError as e:
        problem = e.reason

    @asynccontextmanager
    async def box_for(ctx: Context) -> AsyncIterator[AsyncApplianceClient]:
        if box is None:
            raise ToolError(f"not_paired: {problem}")
        yield box

    async def run() -> None:
        try:
            await build_server(box_for).run_stdio_async()
        finally:
            if box is not None:
                await box.aclose()

    anyio.run(run)
    return 0
