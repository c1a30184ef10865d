"""The box as a guarded MCP tool gateway for desktop agents.

``tools.py`` defines the tools and resources once; ``stdio.py`` serves them
on a desktop (``appliance mcp``, over the pinned LAN API with the desktop's
credential); ``appliance/api/routes/mcp.py`` serves them on the box at
``/mcp`` (streamable HTTP, the caller's bearer credential). See docs/mcp.md.
"""
