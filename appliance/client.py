"""The desktop side: a small client for the LAN API, used by the CLI and scripts.

TLS is pinned to the box's certificate fingerprint (printed by ``appliance up``):
the certificate is fetched, its fingerprint compared, and then that exact
certificate is the only one trusted.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from appliance.api.tls import fingerprint as cert_fingerprint

DEFAULT_CREDENTIALS = Path(
    os.environ.get("APPLIANCE_CREDENTIALS", Path.home() / ".config" / "appliance" / "client.json")
)


class ClientError(Exception):
    def __init__(self, status: int, body: dict[str, Any]):
        self.status = status
        self.body = body
        super().__init__(f"{status} {body.get('code')}: {body.get('reason')}")


def _verify_for(url: str, pinned: str | None) -> ssl.SSLContext | bool:
    parsed = urlparse(url)
    if parsed.scheme != "https":
        return True
    if not pinned:
        raise ValueError("an https URL needs the device's certificate fingerprint to pin")
    if not parsed.hostname:
        raise ValueError(f"{url!r} names no host")
    pem = ssl.get_server_certificate((parsed.hostname, parsed.port or 443)).encode()
    seen = cert_fingerprint(pem)
    if seen.replace(":", "").upper() != pinned.replace(":", "").upper():
        raise ValueError(f"certificate fingerprint {seen} does not match the pinned {pinned}")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False  # the pin, not a name, identifies the box
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as f:
        f.write(pem)
    try:
        ctx.load_verify_locations(f.name)
    finally:
        os.unlink(f.name)
    return ctx


class ApplianceClient:
    def __init__(
        self,
        url: str,
        credential: str | None = None,
        *,
        fingerprint: str | None = None,
        timeout: float = 90.0,
    ):
        self.url = url.rstrip("/")
        self.credential = credential
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            verify=_verify_for(self.url, fingerprint),
        )
        # What was pinned at pairing: the device key, the last epoch seen.
        self.pins: dict[str, Any] = {}

    @classmethod
    def from_file(cls, path: Path = DEFAULT_CREDENTIALS) -> ApplianceClient:
        data = json.loads(path.read_text())
        client = cls(data["url"], data["credential"], fingerprint=data.get("fingerprint"))
        client.pins = {k: data[k] for k in ("device_key_pem", "epoch", "ak_pem") if k in data}
        return client

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        r = self.http.request(method, path, **kw)
        try:
            body = r.json()
        except ValueError:
            body = {"code": "bad_response", "reason": r.text[:200]}
        if r.status_code >= 400 and r.status_code != 403:
            raise ClientError(r.status_code, body)
        if r.status_code == 403 and "plan_id" not in body:
            raise ClientError(r.status_code, body)
        return body

    # pairing --------------------------------------------------------------
    def pair(
        self,
        name: str,
        *,
        grant: dict[str, Any] | None = None,
        timeout: float = 180.0,
        on_code: Any = None,
    ) -> dict[str, Any]:
        """Ask to pair for ``grant`` (default: read every share); wait for the press."""
        started = self._call("POST", "/v1/pairings", json={"name": name, "grant": grant})
        if on_code:
            on_code(started["code"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self._call("GET", f"/v1/pairings/{started['pairing_id']}")
            if "credential" in out:
                self.credential = out["credential"]
                self.http.headers["Authorization"] = f"Bearer {self.credential}"
                return out
            if out.get("status") not in ("pending", None):
                raise ClientError(
                    403,
                    {
                        "code": "pairing_" + out["status"],
                        "reason": f"the pairing was {out['status']}",
                    },
                )
            time.sleep(0.5)
        raise TimeoutError("nobody approved the pairing in time")

    def save(self, path: Path = DEFAULT_CREDENTIALS, fingerprint: str | None = None) -> None:
        """Keep the credential and what was pinned at pairing (0600)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            body = {"url": self.url, "credential": self.credential, "fingerprint": fingerprint}
            json.dump({**body, **self.pins}, f)

    # the box's keys ---------------------------------------------------------
    def keys(self) -> dict[str, Any]:
        return self._call("GET", "/v1/keys")

    def pin_device(self) -> dict[str, Any]:
        """Right after pairing: remember the device key (trust on first use) and
        check its boot statement."""
        keys = self.keys()
        self.pins["device_key_pem"] = keys["device_key"]["pem"]
        self.pins["epoch"] = keys["statement"]["epoch"]
        self.verify_keys(keys)
        if not keys["unsafe"]:
            self.verify_attestation()  # pins the attestation key, checks the device key
        return keys

    def verify_attestation(self) -> list[str]:
        """Ask the TPM for a quote and a certification of the device key with a
        fresh nonce, and check both against the keys pinned at pairing."""
        from appliance.issuer.attestation import verify_certify, verify_quote

        nonce = os.urandom(16)
        answer = self._call("GET", "/v1/attestation", params={"nonce": nonce.hex()})
        ak = self.pins.setdefault("ak_pem", answer["ak_pem"])
        if answer["ak_pem"] != ak:
            raise ValueError("the box's attestation key is not the one pinned at pairing")
        device = self.pins["device_key_pem"].encode()
        quote = verify_quote(answer["quote"], nonce, ak.encode())
        cert = verify_certify(answer["certify"], nonce, ak.encode(), device)
        problems = quote.problems + cert.problems
        if problems:
            raise ValueError("attestation failed: " + "; ".join(problems))
        return quote.proved + cert.proved

    def verify_keys(self, keys: dict[str, Any] | None = None) -> list[str]:
        """Follow the chain from the pinned device key to this start's token root.

        Raises TokenError (from appliance.issuer.statement) with the reason if
        the statement is forged, expired or older than an epoch seen before."""
        from appliance.issuer.statement import verify_statement

        keys = keys or self.keys()
        pinned = self.pins.get("device_key_pem")
        if not pinned:
            raise ValueError("no device key pinned: pair again")
        if keys["device_key"]["pem"] != pinned:
            raise ValueError(
                "the box answers with another device key than the one pinned at pairing: "
                "this is not the box you paired with"
            )
        verified = verify_statement(
            keys["statement"], pinned.encode(), current_epoch=self.pins.get("epoch", 0)
        )
        root = base64.b64decode(keys["token_root"]["public_key"])
        if root != verified.root_public:
            raise ValueError("the token root the box serves is not the one its statement names")
        self.pins["epoch"] = verified.epoch
        return [
            f"the boot statement is signed by the device key {verified.device_key_id} "
            "pinned at pairing",
            f"it vouches for this start's token root until {verified.not_after} (unix time), "
            f"epoch {verified.epoch} (not older than any seen before)",
        ]

    # tasks ----------------------------------------------------------------
    def task(self, text: str, from_content: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"text": text}
        if from_content:
            body["from_content"] = from_content
        return self._call("POST", "/v1/tasks", json=body)

    def task_status(self, task_id: str, wait: float = 0) -> dict[str, Any]:
        return self._call("GET", f"/v1/tasks/{task_id}", params={"wait": wait})

    def task_events(self, task_id: str) -> Any:
        """Yield the task's events (server-sent events) until it ends."""
        with self.http.stream("GET", f"/v1/tasks/{task_id}/events") as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])

    # plans ----------------------------------------------------------------
    def submit(self, intents: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", "/v1/intents", json={"intents": intents})

    def plan(self, plan_id: str, wait: float = 0) -> dict[str, Any]:
        return self._call("GET", f"/v1/plans/{plan_id}", params={"wait": wait})

    def undo(self, action_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/actions/{action_id}/undo")

    def audit(self, start: int = 0, limit: int = 100) -> dict[str, Any]:
        return self._call("GET", "/v1/audit", params={"start": start, "limit": limit})

    def checkpoint(self) -> dict[str, Any]:
        return self._call("GET", "/v1/audit/checkpoint")
