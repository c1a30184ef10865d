"""The LAN contract's versions.

The box lists every version of the LAN API it answers in ``GET /healthz``
(``api_versions``) and in its mDNS announcement (``api``); a client picks
the highest it also speaks, and refuses a box with none in common instead
of misreading its answers. A new version is added here when a path or a
field changes meaning; adding a path or a field does not need one.
"""

from __future__ import annotations

API_VERSIONS: tuple[int, ...] = (1,)
API_VERSION = max(API_VERSIONS)
