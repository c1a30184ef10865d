"""Secrets sealed to the TPM under a signed PCR policy and an auth value.

A long-lived secret of the broker (the TLS private key, the credential pepper,
HMAC keys) is written to disk only as a *sealed blob*: a TPM keyed-hash object
under the owner storage primary. Its fixed authorisation policy is

    PolicyAuthorize(policy key, policyRef)  then  PolicyAuthValue

so unsealing needs BOTH a PCR policy signed by the policy key (the update
publisher's key) that matches the PCRs right now, AND the object's auth value.
Because the object names the *key* rather than the PCR values, an update that
changes the measured code ships a newly signed policy instead of re-sealing
every secret: the box is never locked out of its own secrets by an update.

The secret crosses the bus (SPI on the Pi, which can be sniffed) only inside
salted sessions with parameter encryption: seal sends it in a salted HMAC
session with DECRYPT set, unseal receives it in a salted policy session with
ENCRYPT set (AES-128-CFB, salt key = the storage primary).

Every transient object and session is flushed in every path (swtpm has three
object slots and raw TCP has no resource manager). See docs/sealing.md for
the PCR plan and what it does and does not protect.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_SE,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPMA_SESSION,
    TPMS_SENSITIVE_CREATE,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
    TSS2_Exception,
)

from appliance.issuer.pcr_policy import (
    SealError,
    SignedPolicy,
    authorized_policy_digest,
    pcr_selection,
    signer_public,
)
from appliance.issuer.tpm import Tpm

log = logging.getLogger("appliance.tpm_seal")

SEAL_FORMAT = "appliance-sealed-v1"
# A sealed data object holds at most MAX_SYM_DATA (128) bytes; larger secrets
# (a TLS key in PEM) are encrypted in software under a sealed 32-byte key.
MAX_DIRECT = 128

# Parameter encryption: AES-128-CFB, the one every TPM 2.0 implements.
SESSION_SYMMETRIC = TPMT_SYM_DEF(
    algorithm=TPM2_ALG.AES,
    keyBits=TPMU_SYM_KEY_BITS(aes=128),
    mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
)
# Seal: the secret and the auth value travel in create's first parameter
# (inSensitive), so the command is encrypted (DECRYPT). Unseal: the secret
# comes back in the response (ENCRYPT); DECRYPT is harmless there (unseal has
# no command parameter) and set so one attribute set serves both directions.
# trsess_set_attributes replaces all flags, hence CONTINUESESSION each time.
SEAL_SESSION_ATTRS = TPMA_SESSION.DECRYPT | TPMA_SESSION.CONTINUESESSION
UNSEAL_SESSION_ATTRS = TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION

# The sealed object: bound to this TPM and this parent, no DA counting (the
# auth value is a machine secret, not a guessable PIN, and a wrong-auth probe
# must not lock the TPM out for the device key), and BOTH user and admin
# roles need the policy (userWithAuth clear, adminWithPolicy set), so the
# auth value alone can neither unseal nor change the object's auth.
SEALED_ATTRS = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.NODA
SEALED_ATTRS |= TPMA_OBJECT.ADMINWITHPOLICY

REASON_PCR = (
    "the PCRs do not match the signed policy (was the code changed without an authorised policy?)"
)
REASON_AUTH = "wrong auth value"
REASON_SIGNER = "the policy was not signed by the configured policy key"


def _ecdsa_tpm_signature(der: bytes) -> TPMT_SIGNATURE:
    r, s = decode_dss_signature(der)
    sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    sig.signature.ecdsa.hash = TPM2_ALG.SHA256
    sig.signature.ecdsa.signatureR = r.to_bytes(32, "big")
    sig.signature.ecdsa.signatureS = s.to_bytes(32, "big")
    return sig


# --------------------------------------------------------------------------
# Sealing


def _rc_base(e: TSS2_Exception) -> int:
    """The TPM response code without its parameter/session/handle number."""
    rc = int(e.rc) & 0xFFF
    return rc & 0xBF if rc & 0x80 else rc


def _flush(esapi: ESAPI, handles: list[ESYS_TR]) -> None:
    """Flush transient handles in reverse order; a flush failure must not hide
    the original error, but is logged (a leak costs one of three slots)."""
    while handles:
        h = handles.pop()
        try:
            esapi.flush_context(h)
        except TSS2_Exception as e:
            log.warning("could not flush a TPM handle: %s", e)


class Sealer:
    """Seals and unseals secrets under (signed PCR policy AND auth value).

    ``signed_policy`` is called at each unseal, so a policy file replaced by an
    update is picked up without restarting."""

    def __init__(
        self,
        tpm: Tpm,
        *,
        policy_signer_public_pem: bytes,
        pcrs: list[int],
        auth: bytes,
        signed_policy: Callable[[], SignedPolicy],
        policy_ref: bytes = b"",
    ):
        if len(auth) > 32:
            raise ValueError("the auth value is at most 32 bytes (the name hash size)")
        self.tpm = tpm
        self.signer_pem = policy_signer_public_pem
        key = serialization.load_pem_public_key(policy_signer_public_pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("the policy key must be an ECC P-256 public key")
        self.signer_key: ec.EllipticCurvePublicKey = key
        self.signer_public = signer_public(policy_signer_public_pem)
        self.signer_name = bytes(self.signer_public.publicArea.get_name())
        self.pcrs = sorted(set(pcrs))
        pcr_selection(self.pcrs)  # validates
        self.auth = auth
        self.policy_ref = policy_ref
        self.signed_policy = signed_policy
        self.auth_policy = authorized_policy_digest(self.signer_name, policy_ref)
        # What the last unseal session looked like (read back from ESAPI), so
        # tests and `appliance tpm status` can show it was salted and encrypted.
        self.last_unseal_session: dict[str, object] = {}

    # ---- seal

    def _template(self) -> TPM2B_PUBLIC:
        public = TPMT_PUBLIC(
            type=TPM2_ALG.KEYEDHASH,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=SEALED_ATTRS,
            authPolicy=self.auth_policy,
        )
        public.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
        return TPM2B_PUBLIC(publicArea=public)

    def seal(self, data: bytes) -> bytes:
        """A self-describing sealed blob (JSON bytes) for ``data``."""
        mode = "direct"
        payload = data
        ciphertext = b""
        nonce = b""
        if len(data) > MAX_DIRECT:
            # Envelope: the TPM seals a fresh AES-256 key; the data is encrypted
            # with it in software (AES-GCM, bound to the format string).
            mode = "envelope"
            payload = AESGCM.generate_key(bit_length=256)
            nonce = os.urandom(12)
            ciphertext = AESGCM(payload).encrypt(nonce, data, SEAL_FORMAT.encode())
        sensitive = TPM2B_SENSITIVE_CREATE(
            sensitive=TPMS_SENSITIVE_CREATE(userAuth=self.auth, data=payload)
        )
        with self.tpm.use() as esapi:
            handles: list[ESYS_TR] = []
            try:
                primary = self.tpm.storage_primary(esapi)
                handles.append(primary)
                # Salted HMAC session: the secret and auth value in create's
                # inSensitive are encrypted on the bus.
                session = esapi.start_auth_session(
                    primary,
                    ESYS_TR.NONE,
                    TPM2_SE.HMAC,
                    SESSION_SYMMETRIC,
                    TPM2_ALG.SHA256,
                )
                handles.append(session)
                esapi.trsess_set_attributes(session, SEAL_SESSION_ATTRS)
                private, public, *_ = esapi.create(
                    primary, sensitive, self._template(), session1=session
                )
            finally:
                _flush(esapi, handles)
        blob = {
            "format": SEAL_FORMAT,
            "mode": mode,
            "pcrs": self.pcrs,
            "policy_ref": self.policy_ref.hex(),
            "policy_signer_name": self.signer_name.hex(),
            "public": base64.b64encode(public.marshal()).decode(),
            "private": base64.b64encode(private.marshal()).decode(),
        }
        if mode == "envelope":
            blob["nonce"] = base64.b64encode(nonce).decode()
            blob["ciphertext"] = base64.b64encode(ciphertext).decode()
        return json.dumps(blob, sort_keys=True).encode()

    # ---- unseal

    def _check_policy(self, policy: SignedPolicy, pcrs: list[int], policy_ref: bytes) -> bytes:
        """Software checks first, for a clear reason (the TPM enforces them again)."""
        try:
            signature = base64.b64decode(policy.signature, validate=True)
            self.signer_key.verify(signature, policy.message(), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError) as e:
            raise SealError(REASON_SIGNER) from e
        if bytes.fromhex(policy.policy_ref) != policy_ref:
            raise SealError(f"{REASON_SIGNER} for this blob (policyRef differs)")
        if sorted(policy.pcrs) != pcrs:
            raise SealError(f"{REASON_PCR} (the policy names PCRs {policy.pcrs}, not {pcrs})")
        return signature

    def unseal(self, blob: bytes) -> bytes:
        """The secret, if the current PCRs match a signed policy and the auth is right."""
        try:
            data = json.loads(blob)
            if data.get("format") != SEAL_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            pcrs = sorted(int(p) for p in data["pcrs"])
            policy_ref = bytes.fromhex(data["policy_ref"])
            public, _ = TPM2B_PUBLIC.unmarshal(base64.b64decode(data["public"]))
            private, _ = TPM2B_PRIVATE.unmarshal(base64.b64decode(data["private"]))
        except (ValueError, KeyError, TypeError) as e:
            raise SealError(f"not a sealed blob of this appliance ({e})") from None
        if bytes.fromhex(data.get("policy_signer_name", "")) != self.signer_name:
            raise SealError(f"{REASON_SIGNER} (the blob was sealed for another policy key)")
        try:
            policy = self.signed_policy()
        except SealError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise SealError(f"no usable signed PCR policy ({e})") from None
        signature = self._check_policy(policy, pcrs, policy_ref)
        approved = bytes.fromhex(policy.pcr_policy_digest)

        with self.tpm.use() as esapi:
            handles: list[ESYS_TR] = []
            try:
                primary = self.tpm.storage_primary(esapi)
                handles.append(primary)
                sealed = esapi.load(primary, private, public)
                handles.insert(0, sealed)
                # Salted (ECDH with the storage primary) and parameter-encrypted.
                session = esapi.start_auth_session(
                    primary,
                    ESYS_TR.NONE,
                    TPM2_SE.POLICY,
                    SESSION_SYMMETRIC,
                    TPM2_ALG.SHA256,
                )
                handles.insert(0, session)
                # The primary is no longer needed: free its slot now.
                handles.remove(primary)
                esapi.flush_context(primary)

                esapi.policy_pcr(session, b"", pcr_selection(pcrs))
                if bytes(esapi.policy_get_digest(session)) != approved:
                    raise SealError(REASON_PCR)

                external = esapi.load_external(self.signer_public, hierarchy=ESYS_TR.OWNER)
                handles.append(external)
                if bytes(esapi.tr_get_name(external)) != self.signer_name:
                    raise SealError(f"{REASON_SIGNER} (TPM name mismatch)")
                a_hash = hashlib.sha256(approved + policy_ref).digest()
                try:
                    ticket = esapi.verify_signature(
                        external, a_hash, _ecdsa_tpm_signature(signature)
                    )
                except TSS2_Exception as e:
                    raise SealError(REASON_SIGNER) from e
                handles.remove(external)
                esapi.flush_context(external)

                try:
                    esapi.policy_authorize(
                        session, approved, self.signer_name, ticket, policy_ref=policy_ref
                    )
                except TSS2_Exception as e:
                    if _rc_base(e) == 0x084:  # TPM_RC_VALUE: digest != approved
                        raise SealError(REASON_PCR) from e
                    raise
                esapi.policy_auth_value(session)
                esapi.tr_set_auth(sealed, self.auth)
                esapi.trsess_set_attributes(session, UNSEAL_SESSION_ATTRS)
                self.last_unseal_session = {
                    "type": "policy",
                    "salted_with": "storage primary (ECC P-256)",
                    "symmetric": "aes128cfb",
                    "attributes": int(esapi.trsess_get_attributes(session)),
                }
                try:
                    secret = bytes(esapi.unseal(sealed, session1=session))
                except TSS2_Exception as e:
                    if _rc_base(e) in (0x08E, 0x0A2):  # AUTH_FAIL, BAD_AUTH
                        raise SealError(REASON_AUTH) from e
                    if _rc_base(e) == 0x09D:  # POLICY_FAIL
                        raise SealError(REASON_PCR) from e
                    raise
            finally:
                _flush(esapi, handles)

        if data.get("mode", "direct") == "direct":
            return secret
        try:
            return AESGCM(secret).decrypt(
                base64.b64decode(data["nonce"]),
                base64.b64decode(data["ciphertext"]),
                SEAL_FORMAT.encode(),
            )
        except Exception as e:  # noqa: BLE001 - InvalidTag, bad base64, missing key
            raise SealError("the sealed blob's ciphertext was altered") from e
