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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CC,
    TPM2_SE,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPMA_SESSION,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
    TSS2_Exception,
)

from appliance.errors import ApplianceError
from appliance.issuer.keys import key_id, read_secret, write_secret
from appliance.issuer.tpm import Tpm

log = logging.getLogger("appliance.tpm_seal")

SEAL_FORMAT = "appliance-sealed-v1"
POLICY_FORMAT = "appliance-pcr-policy-v1"

# PCR 23 is the PC Client "application support" PCR: free for software to
# use, and resettable at locality 0 (so is PCR 16, the debug PCR, which we
# leave alone). The Pi firmware measures nothing, so PCRs 0-15 stay zero
# unless something extends them. See docs/sealing.md for what follows.
MEASUREMENT_PCR = 23
DEFAULT_PCRS = [MEASUREMENT_PCR]
RESETTABLE_PCRS = frozenset({16, 23})

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


class SealError(ApplianceError):
    """A sealed secret could not be released: the broker must fail closed."""

    status = 503
    code = "unseal_refused"


# --------------------------------------------------------------------------
# PCR policy digests (software and TPM trial session agree; tests check it)


def _cc(code: int) -> bytes:
    return int(code).to_bytes(4, "big")


def pcr_selection(pcrs: Iterable[int]) -> TPML_PCR_SELECTION:
    """The SHA-256 bank selection of these PCRs."""
    pcrs = sorted(set(pcrs))
    if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
        raise ValueError(f"bad PCR list {pcrs!r}")
    return TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in pcrs))


def pcr_values_digest(pcr_values: dict[int, bytes]) -> bytes:
    """SHA-256 of the PCR values concatenated in ascending PCR order (TPM2_PolicyPCR,
    TPM2_Quote)."""
    return hashlib.sha256(b"".join(pcr_values[p] for p in sorted(pcr_values))).digest()


def software_pcr_policy_digest(pcr_values: dict[int, bytes]) -> bytes:
    """The policy digest of TPM2_PolicyPCR over these values, without a TPM.

    This is what the update publisher computes for the new code's PCR values."""
    sel = pcr_selection(pcr_values)
    return hashlib.sha256(
        b"\0" * 32 + _cc(TPM2_CC.PolicyPCR) + sel.marshal() + pcr_values_digest(pcr_values)
    ).digest()


def authorized_policy_digest(signer_name: bytes, policy_ref: bytes = b"") -> bytes:
    """The sealed object's authPolicy: PolicyAuthorize(signer, ref) then PolicyAuthValue."""
    d = hashlib.sha256(b"\0" * 32 + _cc(TPM2_CC.PolicyAuthorize) + signer_name).digest()
    d = hashlib.sha256(d + policy_ref).digest()
    return hashlib.sha256(d + _cc(TPM2_CC.PolicyAuthValue)).digest()


def pcr_policy_digest(
    tpm: Tpm, pcrs: list[int], pcr_values: dict[int, bytes] | None = None
) -> bytes:
    """The PolicyPCR digest for the current (or the given) PCR values, computed by
    the TPM in a trial session."""
    sel = pcr_selection(pcrs)
    want = b""  # empty: the TPM uses the current values
    if pcr_values is not None:
        if sorted(pcr_values) != sorted(set(pcrs)):
            raise ValueError("pcr_values must give exactly the selected PCRs")
        want = pcr_values_digest(pcr_values)
    with tpm.use() as esapi:
        session = esapi.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.TRIAL,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            esapi.policy_pcr(session, want, sel)
            return bytes(esapi.policy_get_digest(session))
        finally:
            esapi.flush_context(session)


def read_pcrs(tpm: Tpm, pcrs: list[int]) -> dict[int, bytes]:
    """Current SHA-256 values of these PCRs."""
    return tpm.pcr_read(pcrs)


# --------------------------------------------------------------------------
# Measuring the appliance's own code into a PCR


def package_files(root: Path) -> list[Path]:
    """The files of an installed package directory that make up its code
    (byte-code caches left out: they change without the code changing)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )


def measure_code(paths: list[Path], root: Path | None = None) -> bytes:
    """SHA-256 over the sorted relative paths and contents of these files.

    Deterministic: independent of the order given and of where the tree is
    installed (paths are taken relative to ``root``, by default their common
    parent). Each file contributes ``relpath NUL sha256(content) LF``, which is
    unambiguous (a renamed or moved file changes the measurement)."""
    if not paths:
        raise ValueError("nothing to measure")
    resolved = [Path(p).resolve() for p in paths]
    base = root.resolve() if root is not None else Path(os.path.commonpath(resolved))
    if len(resolved) == 1 and root is None:
        base = resolved[0].parent
    entries = sorted((p.relative_to(base).as_posix(), p) for p in resolved)
    h = hashlib.sha256(b"appliance-code-measurement-v1\n")
    for rel, p in entries:
        h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest() + b"\n")
    return h.digest()


def measure_installed_appliance() -> bytes:
    """The measurement of the running appliance package (what the broker
    extends into PCR 23 at start and the update publisher computes from the
    built tree)."""
    import appliance

    root = Path(appliance.__file__).resolve().parent
    return measure_code(package_files(root), root=root.parent)


def expected_pcr_value(measurement: bytes, initial: bytes = b"\0" * 32) -> bytes:
    """The SHA-256 PCR value after extending ``initial`` with ``measurement``."""
    return hashlib.sha256(initial + measurement).digest()


def extend_measurement(tpm: Tpm, pcr: int, digest: bytes) -> bytes:
    """Extend a PCR's SHA-256 bank with a 32-byte digest; returns the new value."""
    tpm.pcr_extend(pcr, digest)
    return tpm.pcr_read([pcr])[pcr]


def measure_at_start(tpm: Tpm, measurement: bytes, pcr: int = MEASUREMENT_PCR) -> bytes:
    """The start-up step: make ``pcr`` equal H(0 || measurement); return its value.

    A fresh boot has the PCR at zero: extend it. A restarted broker finds it
    already at the expected value: leave it. Anything else means something
    else extended it this boot: a resettable PCR (16, 23) is reset and
    re-extended (anyone at locality 0 could do the same, so refusing would
    protect nothing; see docs/sealing.md); any other PCR fails closed."""
    want = expected_pcr_value(measurement)
    current = read_pcrs(tpm, [pcr])[pcr]
    if current == want:
        return current
    if current != b"\0" * 32:
        if pcr not in RESETTABLE_PCRS:
            raise SealError(
                f"PCR {pcr} was already extended by something else this boot; "
                "reboot so the appliance measures first"
            )
        log.warning("PCR %d held a foreign value; resetting it before measuring", pcr)
        with tpm.use() as esapi:
            esapi.pcr_reset(ESYS_TR.PCR0 + pcr)
    return extend_measurement(tpm, pcr, measurement)


# --------------------------------------------------------------------------
# The policy key and signed policies


@dataclass(frozen=True)
class SignedPolicy:
    """A PCR policy approved by the policy key: the file shipped with an update
    and stored beside the sealed blobs. JSON-serialisable.

    ``signature`` is ES256 (DER, base64) over ``pcr_policy_digest || policy_ref``,
    i.e. over aHash = SHA-256(approvedPolicy || policyRef), exactly what
    TPM2_VerifySignature checks before TPM2_PolicyAuthorize."""

    pcrs: list[int]
    pcr_policy_digest: str  # hex
    policy_ref: str  # hex
    signature: str  # base64 DER ECDSA-SHA256
    signer_kid: str
    pcr_values_digest: str | None = None  # hex SHA-256 of the approved values, for humans
    pcr_values: dict[str, str] | None = None  # PCR -> hex, for humans
    note: str = ""
    format: str = POLICY_FORMAT
    extra: dict[str, str] = field(default_factory=dict)

    def message(self) -> bytes:
        return bytes.fromhex(self.pcr_policy_digest) + bytes.fromhex(self.policy_ref)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedPolicy:
        data = json.loads(text)
        if data.get("format") != POLICY_FORMAT:
            raise SealError(f"not a signed PCR policy (format {data.get('format')!r})")
        return cls(**data)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SignedPolicy:
        return cls.from_json(path.read_text())


def signer_public(public_pem: bytes) -> TPM2B_PUBLIC:
    """The policy key as a TPM public area (for TPM2_LoadExternal and its name)."""
    public = TPMT_PUBLIC.from_pem(
        public_pem, objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH
    )
    # pytss encodes the point's coordinates in their minimal length, so about
    # one key in 128 gets a 31-byte coordinate that the TPM refuses: always
    # give the full 32 bytes of a P-256 coordinate.
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the policy key must be an ECC P-256 public key")
    numbers = key.public_numbers()
    public.unique.ecc.x = numbers.x.to_bytes(32, "big")
    public.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return TPM2B_PUBLIC(publicArea=public)


def signer_name(public_pem: bytes) -> bytes:
    """The TPM name (nameAlg || SHA-256(TPMT_PUBLIC)) of the policy key."""
    return bytes(signer_public(public_pem).publicArea.get_name())


class PolicySigner:
    """The key that authorises PCR policies.

    In production the update publisher holds it (offline, or in its own HSM)
    and the box only knows its public half. In development it is a software
    key in a file of mode 0600 in the keys directory: UNSAFE, and logged so."""

    def __init__(self, private: ec.EllipticCurvePrivateKey, *, unsafe: bool = True):
        self._private = private
        self.unsafe = unsafe
        self.key_id = key_id(self.public_pem())

    @classmethod
    def load_or_create(cls, path: Path) -> PolicySigner:
        """The development policy key at ``path`` (created once, mode 0600)."""
        if path.exists():
            key = serialization.load_pem_private_key(read_secret(path), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise SealError(f"{path} is not an ECC policy key")
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = ec.generate_private_key(ec.SECP256R1())
            write_secret(
                path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        signer = cls(key, unsafe=True)
        log.warning(
            "UNSAFE development policy key %s in %s: in production the update "
            "publisher holds this key and the box has only its public half",
            signer.key_id,
            path,
        )
        return signer

    def public_pem(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def authorize(
        self,
        pcr_policy_digest: bytes,
        policy_ref: bytes = b"",
        *,
        pcrs: list[int] | None = None,
        pcr_values: dict[int, bytes] | None = None,
        note: str = "",
    ) -> SignedPolicy:
        """Sign a PolicyPCR digest (aHash = H(digest || policyRef))."""
        if len(pcr_policy_digest) != 32:
            raise ValueError("a SHA-256 policy digest is 32 bytes")
        if pcrs is None:
            pcrs = sorted(pcr_values) if pcr_values else list(DEFAULT_PCRS)
        signature = self._private.sign(pcr_policy_digest + policy_ref, ec.ECDSA(hashes.SHA256()))
        return SignedPolicy(
            pcrs=sorted(set(pcrs)),
            pcr_policy_digest=pcr_policy_digest.hex(),
            policy_ref=policy_ref.hex(),
            signature=base64.b64encode(signature).decode(),
            signer_kid=self.key_id,
            pcr_values_digest=pcr_values_digest(pcr_values).hex() if pcr_values else None,
            pcr_values={str(k): v.hex() for k, v in sorted(pcr_values.items())}
            if pcr_values
            else None,
            note=note,
        )

    def authorize_pcr_values(
        self, pcr_values: dict[int, bytes], policy_ref: bytes = b"", note: str = ""
    ) -> SignedPolicy:
        """What the update publisher runs: approve these PCR values (no TPM needed)."""
        return self.authorize(
            software_pcr_policy_digest(pcr_values),
            policy_ref,
            pcrs=sorted(pcr_values),
            pcr_values=pcr_values,
            note=note,
        )


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
        self.signer_key = serialization.load_pem_public_key(policy_signer_public_pem)
        if not isinstance(self.signer_key, ec.EllipticCurvePublicKey):
            raise ValueError("the policy key must be an ECC P-256 public key")
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


def main(argv: list[str] | None = None) -> int:
    """The update publisher's tool: measure a built appliance tree and sign the
    PCR policy for it.

        python -m appliance.issuer.tpm_seal measure TREE/appliance
        python -m appliance.issuer.tpm_seal authorize --key KEY TREE/appliance OUT.json
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m appliance.issuer.tpm_seal")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="print the code measurement and expected PCR value")
    m.add_argument("package", type=Path, help="the appliance package directory")
    a = sub.add_parser("authorize", help="sign a PCR policy for this code")
    a.add_argument("--key", type=Path, required=True, help="the policy key (PEM)")
    a.add_argument("--pcr", type=int, default=MEASUREMENT_PCR)
    a.add_argument("--policy-ref", default="", help="hex policyRef (default empty)")
    a.add_argument("package", type=Path)
    a.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    package = args.package.resolve()
    measurement = measure_code(package_files(package), root=package.parent)
    value = expected_pcr_value(measurement)
    if args.cmd == "measure":
        print(f"measurement {measurement.hex()}\nPCR value   {value.hex()}")
        return 0
    signer = PolicySigner.load_or_create(args.key)
    policy = signer.authorize_pcr_values(
        {args.pcr: value},
        bytes.fromhex(args.policy_ref),
        note=f"code measurement {measurement.hex()}",
    )
    policy.save(args.out)
    print(f"signed policy for PCR {args.pcr} = {value.hex()} by {signer.key_id} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
