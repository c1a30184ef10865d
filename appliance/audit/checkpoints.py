"""Signed checkpoints and the keys that may sign them.

A checkpoint is ``{"tree_size","root_hash","time","key_id","signer",
"boot_count","signature"}``; the signature (ES256, DER, base64) covers the
canonical JSON of the other six fields. It is signed by the device key, or
by a session key that an ``audit.session`` entry before the checkpoint's
tree size vouches for with a device-key signature (docs/audit.md, "Session
keys").
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import ApplianceError
from appliance.intents import canonical_json
from appliance.issuer.keys import Signer, key_id

SESSION_KIND = "audit.session"
# boot_count: the TPM's boot counter (an NV counter bumped at every start)
# when the checkpoint was signed, so a log rolled back across starts shows.
CHECKPOINT_FIELDS = frozenset(
    {"tree_size", "root_hash", "time", "key_id", "signer", "boot_count", "signature"}
)
ENTRY_FIELDS = frozenset({"index", "time", "kind", "data"})


class AuditTampered(ApplianceError):
    """The audit log does not verify against its signed checkpoints: fail closed."""

    status = 503
    code = "audit_tampered"


def checkpoint_payload(checkpoint: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: every field but the signature."""
    return canonical_json({k: checkpoint[k] for k in CHECKPOINT_FIELDS - {"signature"}})


def load_public_key(public_key_pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ApplianceError("the audit public key is not an ECDSA key")
    return key


def signature_ok(key: ec.EllipticCurvePublicKey, checkpoint: dict[str, Any]) -> bool:
    try:
        sig = base64.b64decode(checkpoint["signature"], validate=True)
        key.verify(sig, checkpoint_payload(checkpoint), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def parse_checkpoint(raw: bytes | dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A checkpoint dict, or None and why not."""
    if isinstance(raw, dict):
        cp = raw
    else:
        try:
            cp = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, "is not valid JSON"
    if not isinstance(cp, dict):
        return None, "is not a JSON object"
    if set(cp) != CHECKPOINT_FIELDS:
        return None, f"has fields {sorted(cp)}, expected {sorted(CHECKPOINT_FIELDS)}"
    size, root = cp["tree_size"], cp["root_hash"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None, "has a tree_size that is not a whole number"
    if not isinstance(root, str) or len(root) != 64:
        return None, "has a root_hash that is not 64 hex digits"
    try:
        bytes.fromhex(root)
    except ValueError:
        return None, "has a root_hash that is not 64 hex digits"
    if not all(isinstance(cp[k], str) for k in ("time", "key_id", "signer", "signature")):
        return None, "has a time, key_id, signer or signature that is not a string"
    boot = cp["boot_count"]
    if not isinstance(boot, int) or isinstance(boot, bool) or boot < 0:
        return None, "has a boot_count that is not a whole number"
    return cp, ""


class Keys:
    """The keys whose checkpoints count: the device key, and each session key
    from the entry that vouched for it on (a session key may sign only trees
    that include its entry)."""

    def __init__(self, device_pem: bytes) -> None:
        self.device_pem = device_pem
        self.device_id = key_id(device_pem)
        self._keys: dict[str, tuple[ec.EllipticCurvePublicKey, int]] = {
            self.device_id: (load_public_key(device_pem), -1)
        }

    def add_session(self, data: Any, index: int) -> bool:
        """Add the session key an ``audit.session`` entry at ``index`` names;
        False when the device key did not vouch for it (forged)."""
        session = session_key(data, self.device_pem)
        if session is None:
            return False
        self._keys.setdefault(session[0], (session[1], index))
        return True

    def for_checkpoint(self, cp: dict[str, Any]) -> ec.EllipticCurvePublicKey | None:
        """The key a checkpoint names, if it may sign a tree of that size."""
        found = self._keys.get(cp["key_id"])
        if found is None or found[1] >= cp["tree_size"]:
            return None
        return found[0]


def session_statement(device: Signer, session: Signer, *, boot_count: int) -> dict[str, Any]:
    """The device key vouches for this start's in-memory checkpoint key.

    Signing each checkpoint in a TPM would put the TPM (100-600 ms per
    signature on an SPI chip) on every request; instead the device key signs
    this once per start, and the session key signs the checkpoints."""
    body = {
        "audit_key_pem": session.public_key_pem().decode(),
        "key_id": session.key_id,
        "device_key_id": device.key_id,
        "boot_count": boot_count,
    }
    signature = base64.b64encode(device.sign(canonical_json(body))).decode()
    return {**body, "signature": signature}


def session_key(
    data: Any, device_public_pem: bytes
) -> tuple[str, ec.EllipticCurvePublicKey] | None:
    """(key id, key) of a session statement the device key signed, else None."""
    try:
        body = {k: data[k] for k in ("audit_key_pem", "key_id", "device_key_id", "boot_count")}
        signature = base64.b64decode(data["signature"], validate=True)
        pem = body["audit_key_pem"].encode()
        if key_id(pem) != body["key_id"] or body["device_key_id"] != key_id(device_public_pem):
            return None
        device = load_public_key(device_public_pem)
        device.verify(signature, canonical_json(body), ec.ECDSA(hashes.SHA256()))
        return body["key_id"], load_public_key(pem)
    except (KeyError, TypeError, AttributeError, ValueError, InvalidSignature, ApplianceError):
        return None
