"""Signed approval receipts: proof of which press authorised which action.

When a person approves a request, the broker signs a receipt with the device
key (the TPM's key on the box):

    {"type": "approval-receipt", "approval_id", "kind", "subject_id",
     "digest" (the request digest the press approved), "status": "approved",
     "decided_by", "gesture" ("hold", "cli"...), "time", "key_id",
     "signer", "signature" (base64 DER ECDSA P-256 / SHA-256 over the
     canonical JSON of every other field)}

and its ``receipt_digest`` (sha256 of the canonical JSON of the receipt,
signature included) goes into every capability token minted under that
approval, and into each ``action.done`` audit entry. The executor checks the
receipt again before it spends a token: signed by the device key, for this
plan's approval id and digest, and cited by the token. So the audit log
proves, with the device's public key alone, which press let which action run.

``appliance receipt verify FILE`` checks a receipt saved from the log.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.db import Database
from appliance.errors import ApplianceError, NotFound
from appliance.intents import canonical_json, digest
from appliance.issuer.keys import Signer

from .types import ApprovalRequest

RECEIPT_TYPE = "approval-receipt"
FIELDS = (
    "type",
    "approval_id",
    "kind",
    "subject_id",
    "digest",
    "status",
    "decided_by",
    "gesture",
    "time",
    "key_id",
    "signer",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    approval_id TEXT PRIMARY KEY,
    receipt TEXT NOT NULL
);
"""


class ReceiptError(ApplianceError):
    """A receipt that does not prove what it claims."""

    status = 403
    code = "receipt_refused"


@dataclass(frozen=True)
class Receipt:
    """A signed receipt (every field but ``receipt_digest`` is signed over)."""

    type: str
    approval_id: str
    kind: str
    subject_id: str
    digest: str  # the request digest the press approved
    status: str
    decided_by: str | None
    gesture: str | None
    time: float
    key_id: str
    signer: str
    signature: str  # base64 DER ECDSA P-256 / SHA-256
    receipt_digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign_receipt(
    signer: Signer,
    *,
    approval_id: str,
    kind: str,
    subject_id: str,
    request_digest: str,
    decided_by: str | None,
    gesture: str | None,
    signer_label: str,
    now: float | None = None,
) -> Receipt:
    """A receipt for an approved request, signed by ``signer`` (the device key)."""
    body = {
        "type": RECEIPT_TYPE,
        "approval_id": approval_id,
        "kind": kind,
        "subject_id": subject_id,
        "digest": request_digest,
        "status": "approved",
        "decided_by": decided_by,
        "gesture": gesture,
        "time": time.time() if now is None else now,
        "key_id": signer.key_id,
        "signer": signer_label,
    }
    signature = base64.b64encode(signer.sign(canonical_json(body))).decode()
    return _receipt(body, signature, receipt_digest(body, signature))


def receipt_digest(body: dict[str, Any], signature: str) -> str:
    return digest({**{k: body[k] for k in FIELDS}, "signature": signature})


def verify_receipt(
    receipt: object,
    public_key_pem: bytes,
    *,
    approval_id: str | None = None,
    request_digest: str | None = None,
    receipt_digest_expected: str | None = None,
) -> Receipt:
    """Check ``receipt`` (a :class:`Receipt` or its JSON form) and return it;
    ReceiptError with the reason otherwise.

    Checked: its shape, the device key's signature over every field, that
    it records an approval, that its ``receipt_digest`` is its own, and,
    when given, that it is for ``approval_id`` and ``request_digest`` and is
    the receipt a token cited (``receipt_digest_expected``)."""
    if isinstance(receipt, Receipt):
        receipt = receipt.to_dict()
    if not isinstance(receipt, dict):
        raise ReceiptError("a receipt is a JSON object")
    missing = [f for f in (*FIELDS, "signature") if f not in receipt]
    if missing:
        raise ReceiptError(f"the receipt lacks {', '.join(missing)}")
    if receipt["type"] != RECEIPT_TYPE:
        raise ReceiptError(f"not an approval receipt (type {receipt['type']!r})")
    body = {k: receipt[k] for k in FIELDS}
    try:
        signature = base64.b64decode(receipt["signature"], validate=True)
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ReceiptError("the device key is not an ECC key")
        key.verify(signature, canonical_json(body), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        raise ReceiptError(
            "the receipt's signature does not verify with the device key: it was altered, "
            "or signed by another key"
        ) from None
    if receipt["status"] != "approved":
        raise ReceiptError(f"the receipt records {receipt['status']!r}, not an approval")
    own = receipt_digest(body, receipt["signature"])
    if receipt.get("receipt_digest", own) != own:
        raise ReceiptError("the receipt's receipt_digest is not the digest of the receipt")
    if approval_id is not None and receipt["approval_id"] != approval_id:
        raise ReceiptError(
            f"the receipt is for approval {receipt['approval_id']}, not {approval_id}"
        )
    if request_digest is not None and receipt["digest"] != request_digest:
        raise ReceiptError("the receipt approved another request (its digest differs)")
    if receipt_digest_expected is not None and own != receipt_digest_expected:
        raise ReceiptError("the token cites another receipt than this approval's")
    return _receipt(body, receipt["signature"], own)


def _receipt(body: dict[str, Any], signature: object, own: str) -> Receipt:
    """The typed receipt of a body whose signature verified."""
    text = ("type", "approval_id", "kind", "subject_id", "digest", "status", "key_id", "signer")
    optional = ("decided_by", "gesture")
    if (
        not all(isinstance(body[k], str) for k in text)
        or not all(body[k] is None or isinstance(body[k], str) for k in optional)
        or not isinstance(body["time"], int | float)
        or not isinstance(signature, str)
    ):
        raise ReceiptError("the receipt's fields have the wrong types")
    return Receipt(
        type=body["type"],
        approval_id=body["approval_id"],
        kind=body["kind"],
        subject_id=body["subject_id"],
        digest=body["digest"],
        status=body["status"],
        decided_by=body["decided_by"],
        gesture=body["gesture"],
        time=float(body["time"]),
        key_id=body["key_id"],
        signer=body["signer"],
        signature=signature,
        receipt_digest=own,
    )


class ReceiptStore:
    """Receipts of this box's approvals, signed by its device key and kept in
    the database so the executor can check them again."""

    def __init__(self, db: Database, signer: Signer, signer_label: str) -> None:
        self.db = db
        self.signer = signer
        self.signer_label = signer_label
        db.ensure(SCHEMA)

    def sign(self, request: ApprovalRequest) -> Receipt:
        """What the press approved, signed (on the TPM on a box) and stored."""
        receipt = sign_receipt(
            self.signer,
            approval_id=request.approval_id,
            kind=request.kind,
            subject_id=request.subject_id,
            request_digest=request.digest,
            decided_by=request.decided_by,
            gesture=request.gesture,
            signer_label=self.signer_label,
        )
        self.db.execute(
            "INSERT INTO receipts (approval_id, receipt) VALUES (?, ?)",
            (request.approval_id, canonical_json(receipt.to_dict()).decode()),
        )
        return receipt

    def load(
        self,
        approval_id: str,
        *,
        request_digest: str | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> Receipt:
        """The stored receipt of an approval, checked against the device key
        (and, given one, the request digest it must have approved)."""
        sql = "SELECT receipt FROM receipts WHERE approval_id = ?"
        row = (
            conn.execute(sql, (approval_id,)).fetchone()
            if conn
            else self.db.one(sql, (approval_id,))
        )
        if row is None:
            raise NotFound(f"no receipt for approval {approval_id!r}")
        return verify_receipt(
            json.loads(row["receipt"]),
            self.signer.public_key_pem(),
            approval_id=approval_id,
            request_digest=request_digest,
        )
