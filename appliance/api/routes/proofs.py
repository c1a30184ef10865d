"""What a desktop checks the box with: the audit log and its checkpoints,
the device key and boot statement, TPM attestation."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Query

from appliance.api.deps import BrokerDep, Client
from appliance.api.openapi import AUTHENTICATED, answers

router = APIRouter()


@router.get("/v1/audit", responses=answers(*AUTHENTICATED, 422))
def audit(
    client_id: Client,
    broker: BrokerDep,
    start: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """A page of the log: every entry with an ``audit`` grant, else only the
    entries about this desktop. ``next`` is where the following page starts."""
    size = broker.audit.size
    entries = broker.views.audit_entries(client_id, start, limit)
    nxt = min(start + limit, size)
    return {"entries": entries, "size": size, "next": nxt if nxt < size else None}


@router.get("/v1/audit/checkpoint", responses=answers(*AUTHENTICATED))
def checkpoint(_: Client, broker: BrokerDep) -> dict[str, Any]:
    return broker.audit.latest_checkpoint()


@router.get("/v1/attestation", responses=answers(*AUTHENTICATED, 422, 501, 503))
def attest(
    _: Client,
    broker: BrokerDep,
    # Whole bytes: an odd number of hex digits is refused here (422), not by bytes.fromhex.
    nonce: Annotated[
        str, Query(pattern="^(?:[0-9a-fA-F]{2}){8,64}$", description="hex, 8-64 bytes")
    ],
) -> dict[str, Any]:
    """TPM2_Quote and TPM2_Certify with the caller's nonce, for the desktop to check."""
    return broker.attestation(bytes.fromhex(nonce))


@router.get("/v1/keys", responses=answers(*AUTHENTICATED))
def keys(_: Client, broker: BrokerDep) -> dict[str, Any]:
    """The device key and this start's boot statement: a desktop that pinned
    the device key follows the chain device key -> statement -> token root."""
    return {
        "signer": broker.keystore.label,
        "unsafe": broker.keystore.unsafe,
        "device_key": {
            "kid": broker.signer.key_id,
            "alg": "ES256",
            "pem": broker.signer.public_key_pem().decode(),
        },
        "statement": broker.statement,
        "token_root": {
            "alg": "Ed25519",
            "public_key": base64.b64encode(broker.tokens.root_public()).decode(),
        },
        "epoch": broker.tokens.epoch(),
        "boot_count": broker.keystore.boot_count,
    }
