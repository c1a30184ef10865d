"""Pinned TLS, and what a desktop keeps about its box.

The box's certificate is self-signed; no certificate authority vouches for
it. A desktop pins its SHA-256 fingerprint (printed by ``appliance up``,
shown on the box's console, announced by mDNS) and from then on trusts that
one certificate and nothing else: the certificate is fetched once, its
fingerprint compared, and it becomes the only trust anchor of every later
connection. Pairing keeps the certificate itself with the credential, so a
later run need not fetch it again, and a box that changed its certificate
is refused instead of trusted anew.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from appliance.api.tls import fingerprint as cert_fingerprint
from appliance.client.errors import NotPaired, NotTheBox, Unreachable

DEFAULT_CREDENTIALS = Path(
    os.environ.get("APPLIANCE_CREDENTIALS", Path.home() / ".config" / "appliance" / "client.json")
)
# What pairing pins besides the certificate (see ApplianceClient.pin_device).
PIN_KEYS = ("device_key_pem", "device_key_id", "epoch", "ak_pem")


def same_fingerprint(a: str, b: str) -> bool:
    def norm(f: str) -> str:
        return f.replace(":", "").strip().upper()

    return bool(a) and bool(b) and norm(a) == norm(b)


def host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def fetch_certificate(url: str, timeout: float = 10.0) -> str:
    """The certificate the server at ``url`` presents (PEM), unverified."""
    host, port = host_port(url)
    try:
        return ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as e:
        raise Unreachable(f"cannot reach {host}:{port} over TLS: {e}") from None


def check_pin(certificate_pem: str, pinned: str, where: str) -> None:
    seen = cert_fingerprint(certificate_pem.encode())
    if not same_fingerprint(seen, pinned):
        raise NotTheBox(
            f"the certificate at {where} (fingerprint {seen}) does not match the pinned "
            f"{pinned}: this is not the box you meant"
        )


def pinned_context(certificate_pem: str) -> ssl.SSLContext:
    """A TLS context that trusts exactly this certificate."""
    ctx = ssl.create_default_context(cadata=certificate_pem)
    ctx.check_hostname = False  # the pin, not a name, identifies the box
    return ctx


def verify_for(
    url: str, fingerprint: str | None, certificate_pem: str | None = None, timeout: float = 10.0
) -> tuple[ssl.SSLContext | bool, str | None]:
    """What httpx verifies ``url`` with, and the pinned certificate (PEM).

    Plain ``http`` (development, loopback only on the box) has nothing to
    pin. ``https`` needs the fingerprint; without the certificate itself it is
    fetched now and must match."""
    if urlparse(url).scheme != "https":
        host_port(url)
        return True, None
    if not fingerprint:
        raise NotTheBox(
            f"{url} speaks TLS with a self-signed certificate: give its fingerprint to pin "
            "(--fingerprint; `appliance up` and the box's console show it)"
        )
    pem = certificate_pem or fetch_certificate(url, timeout)
    check_pin(pem, fingerprint, url)
    return pinned_context(pem), pem


@dataclass
class Credentials:
    """What a paired desktop keeps (a JSON file of mode 0600)."""

    url: str
    credential: str | None = None
    fingerprint: str | None = None
    certificate_pem: str | None = None
    pins: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # the box's name, as discovery announced it

    @classmethod
    def load(cls, path: Path = DEFAULT_CREDENTIALS) -> Credentials:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotPaired(
                f"no credential at {path}: pair this desktop first (`appliance pair`)"
            ) from None
        except (OSError, ValueError) as e:
            raise NotPaired(f"the credential file {path} cannot be read: {e}") from None
        if not isinstance(data, dict) or not data.get("url") or not data.get("credential"):
            raise NotPaired(f"{path} holds no credential: pair again (`appliance pair`)")
        return cls(
            url=str(data["url"]),
            credential=str(data["credential"]),
            fingerprint=data.get("fingerprint"),
            certificate_pem=data.get("certificate_pem"),
            pins={k: data[k] for k in PIN_KEYS if k in data},
            name=data.get("name"),
        )

    def save(self, path: Path = DEFAULT_CREDENTIALS) -> None:
        """Write the file (0600, its folder 0700), replacing it whole."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {
            "url": self.url,
            "credential": self.credential,
            "fingerprint": self.fingerprint,
            "certificate_pem": self.certificate_pem,
            "name": self.name,
            **self.pins,
        }
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1)
        os.replace(tmp, path)
