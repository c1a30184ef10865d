"""Attestation: a TPM2_Quote of the measured PCRs and a TPM2_Certify of the
device signing key, both signed by an attestation key (AK) with the caller's
nonce; and the pure-software verification a desktop runs.

Keys (see docs/sealing.md, "Attestation"):

* the **endorsement key** (EK): the standard low-range ECC NIST P-256 EK of
  the TCG EK Credential Profile (template L-2, policy PolicySecret(endorsement
  hierarchy)). It is re-created on demand (same template, same key), its
  public part is recorded at provisioning in ``ek.pub.pem`` (and the EK
  certificate, when the TPM carries one, in ``ek.crt.der``), and it is
  flushed straight away.
* the **attestation key** (AK): a restricted ECC P-256 ECDSA-SHA256 signing
  key created *under the EK* (as ``tpm2_createak`` does), persistent at
  :data:`AK_HANDLE`. Restricted means the TPM signs with it only data it
  generated itself (quotes, certifications), never arbitrary bytes, so a
  signature by the AK over a TPMS_ATTEST really is the TPM's word.

Trust: the desktop trusts the AK because it recorded the AK's public key when
it paired with the box (trust on first use). The EK certificate chain to the
TPM manufacturer is NOT checked here (swtpm has no certificate in this setup).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HT,
    TPM2_SE,
    TPM2_ST,
    TPM2B_PUBLIC,
    TPMA_OBJECT,
    TPMS_ATTEST,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TSS2_Exception,
)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from appliance.errors import ApplianceError
from appliance.issuer.keys import Signer, key_id
from appliance.issuer.pcr_policy import pcr_selection, read_pcrs
from appliance.issuer.tpm import DEVICE_KEY_HANDLE, Tpm, TpmError

log = logging.getLogger("appliance.attestation")

# In the owner's range beside the device key (tpm.DEVICE_KEY_HANDLE). Not
# 0x81010002: the TCG EK Credential Profile reserves that for the ECC P-256
# EK itself (0x81010001 for the RSA EK), and tools that find a key there
# treat it as the EK.
AK_HANDLE = 0x81000A02
EK_TYPE = "EK-ECC256"  # TCG EK Credential Profile, low range, template L-2
TPM_GENERATED_VALUE = 0xFF544347  # "\xffTCG": the TPM made this structure
NONCE_MIN, NONCE_MAX = 8, 64  # qualifyingData is at most a SHA-512 digest long

AK_ATTRS = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.NODA
)
# The key scheme is fixed in the AK (ECDSA-SHA256): quote/certify pass NULL.
NULL_SCHEME = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)


class AttestationError(ApplianceError):
    status = 400
    code = "bad_attestation_request"


# ------------------------------------------------------------------ TPM side


def _persistent_handles(esapi: ESAPI) -> set[int]:
    _, data = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HT.PERSISTENT << 24, 64)
    return {int(h) for h in data.data.handles}


def _nv_indices(esapi: ESAPI) -> set[int]:
    _, data = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HT.NV_INDEX << 24, 256)
    return {int(h) for h in data.data.handles}


def _nv_reader(esapi: ESAPI) -> Callable[[int], bytes]:
    """Reads EK certificate/template NV indices, answering NoSuchIndex for absent
    ones without asking the TPM (which would log a TSS error for each)."""
    present = _nv_indices(esapi)

    def read(index: int) -> bytes:
        if int(index) not in present:
            raise NoSuchIndex(index)
        with _persistent(esapi, index) as handle:
            public, _ = esapi.nv_read_public(handle)
            size = public.nvPublic.dataSize
            out = b""
            while len(out) < size:
                chunk = min(512, size - len(out))
                out += bytes(esapi.nv_read(handle, chunk, len(out), auth_handle=ESYS_TR.OWNER))
            return out

    return read


def _endorsement_session(esapi: ESAPI) -> ESYS_TR:
    """A policy session satisfying the EK's policy, PolicySecret(endorsement)."""
    session = esapi.start_auth_session(
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        TPM2_SE.POLICY,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )
    try:
        esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
    except TSS2_Exception:
        esapi.flush_context(session)
        raise
    return session


def _create_ek(esapi: ESAPI) -> tuple[ESYS_TR, TPM2B_PUBLIC, bytes | None]:
    """The EK (transient; caller flushes), its public area and certificate if any."""
    try:
        cert, template = create_ek_template(EK_TYPE, _nv_reader(esapi))
    except TSS2_Exception as e:  # reading the certificate may need auth we lack
        log.info("EK certificate not readable (%s); using the default template", e)
        from tpm2_pytss.internal.templates import ek_template

        default = ek_template.lookup(EK_TYPE).template.publicArea
        cert, template = None, TPM2B_PUBLIC(publicArea=default)
    handle, public, *_ = esapi.create_primary(None, template, ESYS_TR.ENDORSEMENT)
    return handle, public, cert


def _ak_template() -> TPM2B_PUBLIC:
    template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=AK_ATTRS)
    # A restricted signing key has no symmetric cipher (parse puts AES there).
    template.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
    return template


@contextmanager
def _persistent(esapi: ESAPI, handle: int) -> Iterator[ESYS_TR]:
    """An ESAPI reference to a persistent object or NV index.

    Deliberately NOT tr_close'd: ESAPI hands out one shared ESYS_TR per TPM
    handle, so closing it would also invalidate the reference the Tpm class
    caches for the device key (measured: tr_from_tpmpublic returns the same
    ESYS_TR each time, so nothing accumulates either)."""
    yield esapi.tr_from_tpmpublic(handle)


def _read_ak(esapi: ESAPI) -> TPM2B_PUBLIC:
    """The AK's public area, refusing anything else squatting on AK_HANDLE."""
    with _persistent(esapi, AK_HANDLE) as handle:
        public, _, _ = esapi.read_public(handle)
    attrs = public.publicArea.objectAttributes
    need = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
    if public.publicArea.type != TPM2_ALG.ECC or (attrs & need) != need:
        raise TpmError(
            f"the object at 0x{AK_HANDLE:08x} is not a restricted signing key; "
            "refusing to use it as the attestation key"
        )
    return public


def _pem(public: TPM2B_PUBLIC) -> bytes:
    return public.publicArea.to_pem()


def provision(tpm: Tpm, keys_dir: Path) -> dict[str, Any]:
    """Create (once) the AK under the EK, persist it at AK_HANDLE, and record the
    EK and AK public keys in ``keys_dir``. Idempotent."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tpm.use() as esapi:
        handles: list[ESYS_TR] = []
        try:
            ek, ek_public, cert = _create_ek(esapi)
            handles.append(ek)
            created = False
            if AK_HANDLE not in _persistent_handles(esapi):
                # The EK has no userWithAuth: using it as a parent needs its
                # policy, PolicySecret(endorsement), once per command.
                session = _endorsement_session(esapi)
                handles.append(session)
                private, public, *_ = esapi.create(ek, None, _ak_template(), session1=session)
                handles.remove(session)
                esapi.flush_context(session)
                session = _endorsement_session(esapi)
                handles.append(session)
                ak = esapi.load(ek, private, public, session1=session)
                handles.append(ak)
                esapi.evict_control(ESYS_TR.OWNER, ak, AK_HANDLE)
                created = True
                log.info("attestation key created at 0x%08x", AK_HANDLE)
            ak_public = _read_ak(esapi)
        finally:
            while handles:
                esapi.flush_context(handles.pop())
    ek_pem, ak_pem = _pem(ek_public), _pem(ak_public)
    (keys_dir / "ek.pub.pem").write_bytes(ek_pem)
    (keys_dir / "ak.pub.pem").write_bytes(ak_pem)
    if cert:
        (keys_dir / "ek.crt.der").write_bytes(cert)
    return {
        "ek_public_pem": ek_pem.decode(),
        "ak_public_pem": ak_pem.decode(),
        "ak_handle": f"0x{AK_HANDLE:08x}",
        "ak_kid": key_id(ak_pem),
        "ek_certificate": bool(cert),
        "created": created,
    }


def attest(
    tpm: Tpm | None, nonce: bytes, pcrs: Iterable[int], keys_dir: Path, device: Signer
) -> dict[str, Any]:
    """What ``GET /v1/attestation`` answers: a quote over ``pcrs`` and a
    certification of the device key, both by the attestation key and both
    carrying the caller's nonce, with the public keys to check them."""
    if tpm is None:
        raise ApplianceError(
            "attestation needs the TPM; this box runs on the UNSAFE development key",
            code="no_tpm",
            status=501,
        )
    return {
        "quote": quote(tpm, nonce, sorted(pcrs)),
        "certify": certify(tpm, nonce, DEVICE_KEY_HANDLE),
        "ak_pem": ak_public_pem(tpm).decode(),
        "ek_pem": (keys_dir / "ek.pub.pem").read_text(),
        "device_key_pem": device.public_key_pem().decode(),
    }


def ak_public_pem(tpm: Tpm) -> bytes:
    """The persistent AK's public key (PEM)."""
    with tpm.use() as esapi:
        return _pem(_read_ak(esapi))


def _check_nonce(nonce: bytes) -> None:
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise AttestationError(f"the nonce must be {NONCE_MIN} to {NONCE_MAX} bytes")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def quote(tpm: Tpm, nonce: bytes, pcrs: list[int]) -> dict[str, Any]:
    """TPM2_Quote over ``pcrs`` (SHA-256 bank) with ``nonce`` as qualifyingData.

    ``signature`` is ECDSA-SHA256 over the ``attest`` bytes, DER-encoded
    (ASN.1 SEQUENCE of r, s), the form `cryptography` and OpenSSL verify."""
    _check_nonce(nonce)
    selection = pcr_selection(pcrs)
    pcrs = sorted(set(pcrs))
    for _ in range(3):
        with tpm.use() as esapi:
            ak_pem = _pem(_read_ak(esapi))
            with _persistent(esapi, AK_HANDLE) as ak:
                attest, signature = esapi.quote(ak, selection, nonce, NULL_SCHEME)
        attest_bytes = bytes(attest)
        # PCR_Read is a second command: a PCR extended in between would make
        # the values disagree with the signed digest. Retry rather than serve that.
        values = read_pcrs(tpm, pcrs)
        parsed, _ = TPMS_ATTEST.unmarshal(attest_bytes)
        if bytes(parsed.attested.quote.pcrDigest) == _pcr_digest(values):
            break
    else:
        raise TpmError("the PCRs kept changing while quoting; try again")
    return {
        "type": "tpm2-quote",
        "attest": _b64(attest_bytes),
        "signature": _b64(bytes(signature)),
        "signature_format": "ecdsa-sha256-der",
        "pcrs": pcrs,
        "pcr_bank": "sha256",
        "pcr_values": {str(p): values[p].hex() for p in pcrs},
        "ak_public_pem": ak_pem.decode(),
    }


def certify(tpm: Tpm, nonce: bytes, object_handle: int) -> dict[str, Any]:
    """TPM2_Certify of a loaded/persistent object (the device key) by the AK.

    The answer carries the object's TPM2B_PUBLIC so the verifier can compute its
    TPM name and compare its key with the device key it already knows."""
    _check_nonce(nonce)
    with tpm.use() as esapi:
        ak_pem = _pem(_read_ak(esapi))
        with _persistent(esapi, object_handle) as obj, _persistent(esapi, AK_HANDLE) as ak:
            obj_public, obj_name, _ = esapi.read_public(obj)
            # Session 1 authorises the object, session 2 the AK (both empty auth).
            attest, signature = esapi.certify(obj, ak, nonce, NULL_SCHEME)
    return {
        "type": "tpm2-certify",
        "attest": _b64(bytes(attest)),
        "signature": _b64(bytes(signature)),
        "signature_format": "ecdsa-sha256-der",
        "object_handle": f"0x{object_handle:08x}",
        "object_public": _b64(obj_public.marshal()),
        "object_public_pem": _pem(obj_public).decode(),
        "object_name": bytes(obj_name).hex(),
        "ak_public_pem": ak_pem.decode(),
    }


# ------------------------------------------------------------- verifier side


@dataclass
class Verdict:
    """What a verification proved, in plain sentences, and what went wrong."""

    ok: bool = False
    proved: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "proved": self.proved, "problems": self.problems}

    def _finish(self) -> Verdict:
        self.ok = not self.problems
        if not self.ok:
            self.proved = []  # nothing is proved by an attestation that failed a check
        return self


def _pcr_digest(values: dict[int, bytes]) -> bytes:
    return hashlib.sha256(b"".join(values[p] for p in sorted(values))).digest()


def tpm_name(public: TPM2B_PUBLIC) -> bytes:
    """The TPM name of a public area: nameAlg (2 bytes) || H(marshalled TPMT_PUBLIC)."""
    if public.publicArea.nameAlg != TPM2_ALG.SHA256:
        raise ValueError("only SHA-256 names are supported")
    return b"\x00\x0b" + hashlib.sha256(public.publicArea.marshal()).digest()


def _same_key(a_pem: bytes, b_pem: bytes) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    a = serialization.load_pem_public_key(a_pem).public_bytes(*fmt)
    b = serialization.load_pem_public_key(b_pem).public_bytes(*fmt)
    return a == b


def _verify_attest(
    doc: dict[str, Any], nonce: bytes, ak_public_pem: bytes, kind: int, verdict: Verdict
) -> TPMS_ATTEST | None:
    """The checks common to quote and certify; None when the attest is untrustworthy."""
    kid = key_id(ak_public_pem)
    try:
        attest = base64.b64decode(doc["attest"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
        key = serialization.load_pem_public_key(ak_public_pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("the attestation key is not an ECC key")
    except (KeyError, ValueError, TypeError) as e:
        verdict.problems.append(f"malformed attestation ({e})")
        return None
    try:
        key.verify(signature, attest, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        verdict.problems.append(
            f"the signature is not by the attestation key {kid} you pinned "
            "(another TPM, another key, or altered bytes)"
        )
        return None
    try:
        parsed, used = TPMS_ATTEST.unmarshal(attest)
        if used != len(attest):
            raise ValueError("trailing bytes")
    except Exception as e:  # noqa: BLE001 - any parse failure is a refusal
        verdict.problems.append(f"the attestation structure does not parse ({e})")
        return None
    if parsed.magic != TPM_GENERATED_VALUE:
        verdict.problems.append("not a TPM-generated structure (magic is not TPM_GENERATED)")
    if parsed.type != kind:
        verdict.problems.append(f"wrong attestation type ({parsed.type}, expected {kind})")
    if bytes(parsed.extraData) != nonce:
        verdict.problems.append("the attestation does not contain your nonce (a replay?)")
    return parsed


def verify_quote(
    quote: dict[str, Any],
    nonce: bytes,
    ak_public_pem: bytes,
    *,
    expected_pcrs: dict[int, str] | None = None,
) -> Verdict:
    """Check a quote with public data only (no TPM): signature by the pinned AK,
    TPM-generated, your nonce, the reported PCR values match the signed digest,
    and (if given) the expected values."""
    verdict = Verdict()
    parsed = _verify_attest(quote, nonce, ak_public_pem, TPM2_ST.ATTEST_QUOTE, verdict)
    if parsed is None:
        return verdict._finish()
    try:
        pcrs = sorted(int(p) for p in quote["pcrs"])
        values = {int(p): bytes.fromhex(v) for p, v in quote["pcr_values"].items()}
        listed_selection = pcr_selection(pcrs).marshal()
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        verdict.problems.append(f"malformed PCR list ({e})")
        return verdict._finish()
    if sorted(values) != pcrs:
        verdict.problems.append("the PCR values do not cover exactly the listed PCRs")
        return verdict._finish()
    signed_selection = parsed.attested.quote.pcrSelect.marshal()
    if signed_selection != listed_selection:
        verdict.problems.append("the signed PCR selection differs from the listed PCRs")
    if bytes(parsed.attested.quote.pcrDigest) != _pcr_digest(values):
        verdict.problems.append(
            "the reported PCR values do not match the digest the TPM signed (altered values)"
        )
    for pcr, want in sorted((expected_pcrs or {}).items()):
        got = values.get(int(pcr))
        if got is None:
            verdict.problems.append(f"PCR {pcr} was not quoted")
        elif got.hex() != want.lower():
            verdict.problems.append(
                f"PCR {pcr} = {got.hex()[:16]}..., expected {want.lower()[:16]}... "
                "(different code measured, or not the box you expect)"
            )
    if not verdict.problems:
        kid = key_id(ak_public_pem)
        verdict.proved.append(
            f"the quote was signed by the attestation key {kid} just now (it contains your nonce)"
        )
        for pcr in pcrs:
            note = " (as expected)" if expected_pcrs and pcr in expected_pcrs else ""
            verdict.proved.append(f"PCR {pcr} = {values[pcr].hex()}{note}")
        verdict.proved.append(
            f"the TPM has been reset {parsed.clockInfo.resetCount} times since its "
            f"storage hierarchy was last cleared (clock {parsed.clockInfo.clock} ms)"
        )
    return verdict._finish()


def verify_certify(
    cert: dict[str, Any], nonce: bytes, ak_public_pem: bytes, device_public_pem: bytes
) -> Verdict:
    """Check that the device key you know lives in the same TPM as the pinned AK."""
    verdict = Verdict()
    parsed = _verify_attest(cert, nonce, ak_public_pem, TPM2_ST.ATTEST_CERTIFY, verdict)
    if parsed is None:
        return verdict._finish()
    try:
        public, _ = TPM2B_PUBLIC.unmarshal(base64.b64decode(cert["object_public"]))
        name = tpm_name(public)
        object_pem = public.publicArea.to_pem()
    except Exception as e:  # noqa: BLE001 - any parse failure is a refusal
        verdict.problems.append(f"the certified key's public area does not parse ({e})")
        return verdict._finish()
    if bytes(parsed.attested.certify.name) != name:
        verdict.problems.append(
            "the certified TPM name is not the name of the public key sent with it"
        )
    if not _same_key(object_pem, device_public_pem):
        verdict.problems.append(
            f"the certified key is {key_id(object_pem)}, not the device key "
            f"{key_id(device_public_pem)} you know"
        )
    attrs = public.publicArea.objectAttributes
    non_exportable = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    non_exportable |= TPMA_OBJECT.SENSITIVEDATAORIGIN
    if (attrs & non_exportable) != non_exportable:
        verdict.problems.append(
            "the device key is not fixedTPM+fixedParent+sensitiveDataOrigin: "
            "it may exist outside this TPM"
        )
    if not verdict.problems:
        verdict.proved.append(
            f"the device signing key {key_id(device_public_pem)} lives in the same TPM "
            f"as the attestation key {key_id(ak_public_pem)} (TPM2_Certify, just now: "
            "it contains your nonce)"
        )
        verdict.proved.append(
            "the device key was generated inside that TPM and cannot leave it "
            "(fixedTPM, fixedParent, sensitiveDataOrigin)"
        )
    return verdict._finish()
