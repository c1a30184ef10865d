"""Where a plugin's web request may go: never to the box itself.

The broker resolves the host once, refuses it if any of its addresses is
the box's own (loopback, unspecified, link-local, multicast, or an address
bound to one of the box's interfaces: its LAN API, a local model server, the
development TPM), and connects to the address it checked, so a name that
resolves differently a moment later (DNS rebinding) cannot slip past.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import urllib.parse

from appliance.errors import ExecutionError, ScopeError


def remote_address(host: str, port: int) -> str:
    """The address to connect to for ``host``; ScopeError if it is the box's own."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ExecutionError(f"cannot resolve {host!r}: {e}", code="http_failed") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        why = own(address)
        if why:
            raise ScopeError(
                f"{host} is {address}, {why}: a plugin never reaches the box itself",
                code="own_address",
            )
    if not addresses:
        raise ExecutionError(f"{host!r} resolves to no address", code="http_failed")
    return addresses[0]


def own(address: str) -> str | None:
    """Why ``address`` is the box's own, or None."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified or ip.is_multicast:
        return "not the address of another host"
    if ip.is_link_local:
        return "a link-local address"
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as probe:
        # Binding succeeds only to an address one of the box's interfaces has.
        probe.bind((str(ip), 0))
        return "one of the box's own addresses"
    return None


def pinned_url(parts: urllib.parse.SplitResult, address: str) -> str:
    """``parts`` with its host replaced by the checked ``address``."""
    host = f"[{address}]" if ":" in address else address
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
