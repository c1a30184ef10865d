"""Finding the box on the LAN: mDNS / DNS-SD with python-zeroconf.

The box announces itself (``Advertiser``, started by ``appliance up`` when
it serves TLS on a LAN address) as ``_appliance._tcp`` and ``_https._tcp``,
with TXT records::

    fp=<SHA-256 of its TLS certificate, AA:BB:...>   what a desktop pins
    dk=<its device key id>                            checked after pairing
    api=1                                             LAN contract versions
    name=<its name>  path=/v1/pairings

A desktop browses (``browse``, ``appliance discover``) and then checks each
answer (``check``): it connects to the announced addresses and accepts the
box only at an address whose certificate has the announced fingerprint.
Anyone on the LAN can send mDNS answers, so an answer is a claim, never a
proof: a spoofed answer that copies the box's fingerprint but points
elsewhere is refused there, and an answer with its own fingerprint is just
another box to choose from (``appliance pair`` then asks which). The
fingerprint a person can trust without the network is the one on the box's
console; the pairing itself still needs the press on the box.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceListener,
    Zeroconf,
)

from appliance.api.contract import API_VERSIONS
from appliance.client.errors import ClientError
from appliance.client.pinning import check_pin, fetch_certificate

log = logging.getLogger("appliance.discovery")

SERVICE_TYPE = "_appliance._tcp.local."
HTTPS_TYPE = "_https._tcp.local."
ANY_HOST = {"0.0.0.0", "::", ""}
TXT_MAX = 200  # bytes of one TXT value we accept
# Anyone can answer: bound what a flood of answers costs (each is connected to).
MAX_BOXES = 16
MAX_ADDRESSES = 4


def box_name() -> str:
    return socket.gethostname().split(".")[0] or "appliance"


# ---------------------------------------------------------------------- the box
class Advertiser:
    """The box's own announcement, on ``host`` (one address, or every
    address for 0.0.0.0 / ::). Registration runs on its own thread, so a
    slow network never delays the LAN API; ``close`` withdraws it."""

    def __init__(
        self, host: str, port: int, fingerprint: str, device_key_id: str, name: str | None = None
    ) -> None:
        self.name = name or box_name()
        self.port = port
        self.properties = {
            "fp": fingerprint,
            "dk": device_key_id,
            "api": ",".join(str(v) for v in API_VERSIONS),
            "name": self.name,
            "path": "/v1/pairings",
        }
        self.interfaces: Any = InterfaceChoice.All if host in ANY_HOST else [host]
        self.zc: Zeroconf | None = None
        self._thread: threading.Thread | None = None
        self.registered = threading.Event()

    def infos(self) -> list[ServiceInfo]:
        instance = f"appliance on {self.name}"
        # Its own host name, so it never contends with the OS's responder for the box's.
        server = f"appliance-{self.name}.local."
        addresses = None if self.interfaces is InterfaceChoice.All else list(self.interfaces)
        return [
            ServiceInfo(
                kind,
                f"{instance}.{kind}",
                port=self.port,
                properties=self.properties,
                server=server,
                parsed_addresses=addresses or _local_addresses(),
            )
            for kind in (SERVICE_TYPE, HTTPS_TYPE)
        ]

    def start(self) -> Advertiser:
        def register() -> None:
            try:
                self.zc = Zeroconf(interfaces=self.interfaces, ip_version=IPVersion.All)
                for info in self.infos():
                    self.zc.register_service(info, allow_name_change=True)
                self.registered.set()
                log.info(
                    "announced by mDNS as %s (fingerprint %s)", self.name, self.properties["fp"]
                )
            except Exception as e:  # noqa: BLE001 - discovery is a convenience: never stop the box
                log.warning(
                    "mDNS announcement failed (%s: %s); pair with --url", type(e).__name__, e
                )

        self._thread = threading.Thread(target=register, name="mdns", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.zc is not None:
            try:
                self.zc.unregister_all_services()
            finally:
                self.zc.close()
            self.zc = None


def _local_addresses() -> list[str]:
    """Every non-loopback address of this machine."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addr = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            parsed = ipaddress.ip_address(addr)
            if not parsed.is_loopback and not (parsed.version == 6 and parsed.is_link_local):
                out.append(addr)
    return out


# ---------------------------------------------------------------------- a desktop
@dataclass(frozen=True)
class Found:
    """A box as its mDNS answer describes it (a claim, until ``check``)."""

    instance: str
    name: str
    addresses: tuple[str, ...]
    port: int
    fingerprint: str | None
    device_key_id: str | None
    api_versions: tuple[int, ...]

    def urls(self) -> list[str]:
        """IPv4 first, then IPv6 (bracketed)."""
        ordered = sorted(self.addresses, key=lambda a: (":" in a, a))
        return [f"https://{f'[{a}]' if ':' in a else a}:{self.port}" for a in ordered]


@dataclass
class Checked:
    """A found box after connecting: ``url`` and ``certificate_pem`` where
    its certificate matched the announced fingerprint; else ``problem``."""

    found: Found
    url: str | None = None
    certificate_pem: str | None = field(default=None, repr=False)
    problem: str | None = None
    refused_at: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.url is not None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self.found)
        out.update(
            url=self.url,
            status="ok" if self.ok else "refused",
            problem=self.problem,
            refused_at=self.refused_at,
        )
        return out


def _text(properties: dict[bytes, bytes | None], key: str) -> str | None:
    value = properties.get(key.encode())
    if not value or len(value) > TXT_MAX:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _versions(value: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in (value or "").split(",") if v)
    except ValueError:
        return ()


def parse(info: ServiceInfo) -> Found | None:
    if not info.port:
        return None
    props = info.properties or {}
    # Loopback and scoped (link-local IPv6) addresses cannot be dialled as announced.
    addresses = tuple(
        a
        for a in info.parsed_scoped_addresses(IPVersion.All)
        if not a.startswith("127.") and "%" not in a
    )
    if not addresses:
        return None
    addresses = tuple(sorted(addresses, key=lambda a: (":" in a, a)))[:MAX_ADDRESSES]
    return Found(
        instance=info.name.removesuffix("." + info.type),
        name=_text(props, "name") or info.name.split(".")[0],
        addresses=addresses,
        port=info.port,
        fingerprint=_text(props, "fp"),
        device_key_id=_text(props, "dk"),
        api_versions=_versions(_text(props, "api")),
    )


class _Names(ServiceListener):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.add(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.add(name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.discard(name)


def browse(timeout: float = 3.0) -> list[Found]:
    """The boxes that answer within ``timeout`` seconds."""
    zc = Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.All)
    try:
        listener = _Names()
        browser = ServiceBrowser(zc, SERVICE_TYPE, listener)
        time.sleep(timeout)
        browser.cancel()
        found: dict[tuple[Any, ...], Found] = {}
        for name in sorted(listener.names)[:MAX_BOXES]:
            info = zc.get_service_info(SERVICE_TYPE, name, timeout=1500)
            box = parse(info) if info else None
            if box is not None:
                # One box announced twice (by the OS's responder too) is listed
                # once; the same fingerprint at other addresses is listed apart,
                # so a copy of the box's announcement is checked on its own.
                found.setdefault((box.fingerprint, frozenset(box.addresses), box.port), box)
        return sorted(found.values(), key=lambda b: (b.name, b.instance))
    finally:
        zc.close()


def check(found: Found, timeout: float = 5.0) -> Checked:
    """Connect to the announced addresses in turn; accept the first whose
    certificate has the announced fingerprint. A mismatch on the way is kept
    (someone answered for this box with another certificate)."""
    result = Checked(found)
    if not found.fingerprint:
        result.problem = "it announces no certificate fingerprint (fp) to pin"
        return result
    problems = []
    for url in found.urls():
        try:
            pem = fetch_certificate(url, timeout)
            check_pin(pem, found.fingerprint, url)
        except ClientError as e:
            problems.append(e.reason)
            if e.code == "not_the_box":
                result.refused_at.append(url)
            continue
        result.url, result.certificate_pem = url, pem
        break
    if result.url is None:
        result.problem = "; ".join(problems) or "no address answered"
    return result
