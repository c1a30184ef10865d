"""The boot statement: the device key vouches for this start's token root.

Signing every token inside a TPM costs hundreds of milliseconds, so at each
start the broker makes a fresh Biscuit root key in memory and has the device
key (in the TPM) sign one statement::

    {root public key, epoch, boot id, boot count, not-after, device key id, signer}

Anyone holding the device public key (a desktop pins it at pairing) can then
follow the chain device key -> statement -> token root -> token. A statement
is refused when its signature is wrong, when it has expired, or when its
epoch is older than the TPM's epoch counter (``appliance keys revoke-all``
bumps that counter, and with it every earlier statement and token dies).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any

from appliance.errors import TokenError
from appliance.intents import canonical_json
from appliance.issuer.keys import KeyStore, Signer, key_id, verify_signature
from appliance.issuer.tokens import TokenService

STATEMENT_TTL_S = 24 * 3600.0
RENEW_BEFORE_S = 3600.0
FIELDS = (
    "alg",
    "boot_count",
    "boot_id",
    "device_key_id",
    "epoch",
    "not_after",
    "root_public_key",
    "signer",
)


def make_statement(
    signer: Signer,
    root_public: bytes,
    *,
    epoch: int,
    boot_count: int,
    signer_label: str,
    boot_id: str | None = None,
    ttl_s: float = STATEMENT_TTL_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Have the device key sign a statement for ``root_public`` (Ed25519 bytes)."""
    payload = {
        "alg": "Ed25519",
        "boot_count": boot_count,
        "boot_id": boot_id or secrets.token_hex(16),
        "device_key_id": signer.key_id,
        "epoch": epoch,
        "not_after": int((now if now is not None else time.time()) + ttl_s),
        "root_public_key": base64.b64encode(root_public).decode(),
        "signer": signer_label,
    }
    signature = signer.sign(canonical_json(payload))
    return {**payload, "signature": base64.b64encode(signature).decode()}


@dataclass(frozen=True)
class VerifiedStatement:
    root_public: bytes
    epoch: int
    boot_id: str
    not_after: int
    device_key_id: str


def verify_statement(
    statement: dict[str, Any],
    device_public_pem: bytes,
    *,
    current_epoch: int | None = None,
    now: float | None = None,
) -> VerifiedStatement:
    """Check a statement against the device public key; TokenError with the reason if not."""
    if not isinstance(statement, dict) or set(statement) != {*FIELDS, "signature"}:
        raise TokenError("the boot statement is malformed", code="statement_malformed")
    payload = {k: statement[k] for k in FIELDS}
    try:
        signature = base64.b64decode(statement["signature"], validate=True)
        root = base64.b64decode(statement["root_public_key"], validate=True)
    except (ValueError, TypeError):
        raise TokenError("the boot statement is malformed", code="statement_malformed") from None
    if statement["device_key_id"] != key_id(device_public_pem) or not verify_signature(
        device_public_pem, canonical_json(payload), signature
    ):
        raise TokenError(
            "the boot statement was not signed by this box's device key",
            code="statement_forged",
        )
    if (now if now is not None else time.time()) >= statement["not_after"]:
        raise TokenError("the boot statement has expired", code="statement_expired")
    if current_epoch is not None and statement["epoch"] < current_epoch:
        raise TokenError(
            f"the boot statement is from epoch {statement['epoch']}; every statement before "
            f"epoch {current_epoch} was revoked",
            code="statement_revoked",
        )
    return VerifiedStatement(
        root_public=root,
        epoch=int(statement["epoch"]),
        boot_id=str(statement["boot_id"]),
        not_after=int(statement["not_after"]),
        device_key_id=str(statement["device_key_id"]),
    )


class BootChain:
    """This start's chain of authority: the device key vouches (in the boot
    statement) for the token root that signs every capability.

    The executor calls :meth:`check` before it spends any token; the
    statement is renewed (one device-key signature) an hour before it
    expires, and :meth:`revoke_all` moves every earlier token and statement
    into a dead epoch.
    """

    def __init__(self, keystore: KeyStore, tokens: TokenService) -> None:
        self.keystore = keystore
        self.tokens = tokens
        self.signer = keystore.device_signer()
        self.statement = self._new()
        self._checked = ""  # signature of the statement last checked in full

    def _new(self) -> dict[str, Any]:
        return make_statement(
            self.signer,
            self.tokens.root_public(),
            epoch=self.tokens.epoch(),
            boot_count=self.keystore.boot_count,
            signer_label=self.keystore.label,
        )

    def check(self) -> None:
        """The token root is vouched for by the device key, not expired, and of
        the current epoch; TokenError otherwise."""
        now = time.time()
        if self.statement["not_after"] - now < RENEW_BEFORE_S:
            self.statement = self._new()
        statement, epoch = self.statement, self.tokens.epoch()
        if self._checked == statement["signature"]:
            # Signature and root already checked for this statement: what can
            # change since is the clock and the epoch.
            if now >= statement["not_after"]:
                raise TokenError("the boot statement has expired", code="statement_expired")
            if statement["epoch"] < epoch:
                raise TokenError("the boot statement was revoked", code="statement_revoked")
            return
        verified = verify_statement(
            statement, self.signer.public_key_pem(), current_epoch=epoch, now=now
        )
        if verified.root_public != self.tokens.root_public():
            raise TokenError(
                "the boot statement vouches for another token root than the one in use",
                code="statement_mismatch",
            )
        self._checked = statement["signature"]

    def revoke_all(self) -> int:
        """Bump the epoch (the TPM's NV counter): every earlier boot statement
        and capability token is refused from now on; a new statement is signed."""
        epoch = self.tokens.sync_epoch(self.keystore.bump_epoch())
        self.statement = self._new()
        return epoch
