"""Attestation against swtpm: provisioning, quote and certify, and the
software verifier refusing wrong nonces, altered bytes and other keys."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HT, TPMT_SIG_SCHEME

from appliance.issuer import attestation
from appliance.issuer.attestation import (
    AK_HANDLE,
    AttestationError,
    certify,
    provision,
    quote,
    verify_certify,
    verify_quote,
)
from appliance.issuer.keys import key_id
from appliance.issuer.pcr_policy import expected_pcr_value, extend_measurement
from appliance.issuer.tpm import DEVICE_KEY_HANDLE, Tpm

NONCE = b"desktop-nonce-0123456789abcdef"


@pytest.fixture
def provisioned(tpm: Tpm, tmp_path: Path) -> dict[str, Any]:
    return provision(tpm, tmp_path / "keys")


@pytest.fixture
def ak_pem(provisioned: dict[str, Any]) -> bytes:
    return provisioned["ak_public_pem"].encode()


@pytest.fixture
def device_pem(tpm: Tpm) -> bytes:
    return tpm.ensure_device_key()


def software_pem() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def handles(tpm: Tpm, kind: int) -> list[int]:
    with tpm.use() as esapi:
        _, data = esapi.get_capability(TPM2_CAP.HANDLES, kind << 24, 64)
        return [int(h) for h in data.data.handles]


# -------------------------------------------------------------- provisioning


def test_provision_is_idempotent_and_records_public_keys(tpm: Tpm, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = provision(tpm, keys)
    assert first["created"] is True
    second = provision(tpm, keys)
    assert second["created"] is False
    assert second["ak_public_pem"] == first["ak_public_pem"]
    assert second["ek_public_pem"] == first["ek_public_pem"]  # same EK re-created
    assert (keys / "ek.pub.pem").read_text() == first["ek_public_pem"]
    assert (keys / "ak.pub.pem").read_text() == first["ak_public_pem"]
    ek = serialization.load_pem_public_key(first["ek_public_pem"].encode())
    assert isinstance(ek, ec.EllipticCurvePublicKey) and ek.curve.name == "secp256r1"
    assert AK_HANDLE in handles(tpm, TPM2_HT.PERSISTENT)
    # The EK and the provisioning sessions were flushed.
    assert handles(tpm, TPM2_HT.TRANSIENT) == []
    assert handles(tpm, TPM2_HT.LOADED_SESSION) == []


def test_ak_is_restricted_and_refuses_to_sign_arbitrary_data(tpm: Tpm, provisioned: dict) -> None:
    """A restricted key signs only TPM-made structures: nobody can make the AK
    sign a forged TPMS_ATTEST (or anything else) through TPM2_Sign."""
    forged_digest = b"\xff" * 32
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    from tpm2_pytss import TPM2_RH, TPM2_ST, TPMT_TK_HASHCHECK

    ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
    with pytest.raises(attestation.TpmError, match="TPM refused"), tpm.use() as esapi:
        ak = esapi.tr_from_tpmpublic(AK_HANDLE)
        esapi.sign(ak, forged_digest, scheme, ticket)


def test_a_foreign_key_at_the_ak_handle_is_refused(tpm: Tpm, tmp_path: Path) -> None:
    """Something else squatting on AK_HANDLE (here: an unrestricted key) is not used."""
    with tpm.use() as esapi:
        primary = tpm.storage_primary(esapi)
        from tpm2_pytss import TPM2B_PUBLIC

        template = TPM2B_PUBLIC.parse(
            "ecc256:ecdsa-sha256",
            objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign|noda",
        )
        private, public, *_ = esapi.create(primary, None, template)
        key = esapi.load(primary, private, public)
        esapi.evict_control(ESYS_TR.OWNER, key, AK_HANDLE)
        esapi.flush_context(key)
        esapi.flush_context(primary)
    with pytest.raises(attestation.TpmError, match="not a restricted signing key"):
        provision(tpm, tmp_path / "keys")


# ---------------------------------------------------------------------- quote


def test_quote_verifies_with_the_right_nonce(tpm: Tpm, ak_pem: bytes) -> None:
    extend_measurement(tpm, 23, b"\x23" * 32)
    q = quote(tpm, NONCE, [16, 23])
    assert q["signature_format"] == "ecdsa-sha256-der"
    verdict = verify_quote(q, NONCE, ak_pem)
    assert verdict.ok, verdict.problems
    assert f"signed by the attestation key {key_id(ak_pem)} just now" in verdict.proved[0]
    pcr23 = expected_pcr_value(b"\x23" * 32).hex()
    assert f"PCR 23 = {pcr23}" in verdict.proved
    expected = {23: pcr23}
    assert verify_quote(q, NONCE, ak_pem, expected_pcrs=expected).ok


def test_quote_fails_with_a_wrong_nonce(tpm: Tpm, ak_pem: bytes) -> None:
    q = quote(tpm, NONCE, [23])
    verdict = verify_quote(q, b"another-nonce-0123456789", ak_pem)
    assert not verdict.ok and verdict.proved == []
    assert any("nonce" in p for p in verdict.problems)


def test_quote_fails_when_the_attest_is_tampered(tpm: Tpm, ak_pem: bytes) -> None:
    q = quote(tpm, NONCE, [23])
    raw = bytearray(base64.b64decode(q["attest"]))
    raw[-1] ^= 0x01  # the last byte of the signed PCR digest
    bad = dict(q, attest=base64.b64encode(bytes(raw)).decode())
    verdict = verify_quote(bad, NONCE, ak_pem)
    assert not verdict.ok and "not by the attestation key" in verdict.problems[0]


def test_quote_fails_when_reported_pcr_values_are_altered(tpm: Tpm, ak_pem: bytes) -> None:
    q = quote(tpm, NONCE, [23])
    bad = copy.deepcopy(q)
    bad["pcr_values"]["23"] = expected_pcr_value(b"\x99" * 32).hex()  # what a liar would claim
    verdict = verify_quote(bad, NONCE, ak_pem)
    assert not verdict.ok
    assert any("do not match the digest the TPM signed" in p for p in verdict.problems)
    # Claiming a different PCR set than the one signed is also caught.
    bad = copy.deepcopy(q)
    bad["pcrs"] = [16]
    bad["pcr_values"] = {"16": q["pcr_values"]["23"]}
    assert not verify_quote(bad, NONCE, ak_pem).ok
    # Garbage in the unsigned fields is a refusal, not a crash.
    bad = dict(q, pcrs=[99], pcr_values={"99": "00" * 32})
    assert any("malformed" in p for p in verify_quote(bad, NONCE, ak_pem).problems)


def test_quote_fails_when_pcrs_differ_from_the_expected(tpm: Tpm, ak_pem: bytes) -> None:
    extend_measurement(tpm, 23, b"\x01" * 32)
    q = quote(tpm, NONCE, [23])
    verdict = verify_quote(q, NONCE, ak_pem, expected_pcrs={23: "00" * 32})
    assert not verdict.ok and any("PCR 23" in p for p in verdict.problems)


def test_quote_fails_with_a_different_attestation_key(
    tpm: Tpm, ak_pem: bytes, tmp_path: Path
) -> None:
    q = quote(tpm, NONCE, [23])
    # A software key the verifier pinned by mistake (or an impostor's AK).
    assert not verify_quote(q, NONCE, software_pem()).ok
    # A quote by another restricted key in the same TPM, checked against the pinned AK.
    with tpm.use() as esapi:
        ek, _, _ = attestation._create_ek(esapi)
        session = attestation._endorsement_session(esapi)
        private, public, *_ = esapi.create(ek, None, attestation._ak_template(), session1=session)
        esapi.flush_context(session)
        session = attestation._endorsement_session(esapi)
        other = esapi.load(ek, private, public, session1=session)
        esapi.flush_context(session)
        esapi.flush_context(ek)
        from tpm2_pytss import TPML_PCR_SELECTION

        att, sig = esapi.quote(
            other, TPML_PCR_SELECTION.parse("sha256:23"), NONCE, attestation.NULL_SCHEME
        )
        esapi.flush_context(other)
    impostor = dict(q, attest=base64.b64encode(bytes(att)).decode())
    impostor["signature"] = base64.b64encode(bytes(sig)).decode()
    assert verify_quote(impostor, NONCE, public.publicArea.to_pem()).ok  # genuine for its key
    verdict = verify_quote(impostor, NONCE, ak_pem)
    assert not verdict.ok and "not by the attestation key" in verdict.problems[0]


def test_a_software_signed_fake_attest_is_refused(tpm: Tpm, ak_pem: bytes) -> None:
    """A verifier pinning a software key that signs a non-TPM structure: the
    TPM_GENERATED magic check still refuses it."""
    fake_key = ec.generate_private_key(ec.SECP256R1())
    q = quote(tpm, NONCE, [23])
    raw = bytearray(base64.b64decode(q["attest"]))
    raw[0:4] = b"\x00\x00\x00\x00"  # not TPM_GENERATED
    fake = dict(
        q,
        attest=base64.b64encode(bytes(raw)).decode(),
        signature=base64.b64encode(fake_key.sign(bytes(raw), ec.ECDSA(hashes.SHA256()))).decode(),
    )
    fake_pem = fake_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verdict = verify_quote(fake, NONCE, fake_pem)
    assert not verdict.ok and any("TPM_GENERATED" in p for p in verdict.problems)


def test_nonce_size_is_checked(tpm: Tpm, provisioned: dict) -> None:
    with pytest.raises(AttestationError):
        quote(tpm, b"short", [23])
    with pytest.raises(AttestationError):
        quote(tpm, b"x" * 65, [23])


# -------------------------------------------------------------------- certify


def test_certify_of_the_device_key_verifies(tpm: Tpm, ak_pem: bytes, device_pem: bytes) -> None:
    c = certify(tpm, NONCE, DEVICE_KEY_HANDLE)
    verdict = verify_certify(c, NONCE, ak_pem, device_pem)
    assert verdict.ok, verdict.problems
    assert (
        f"the device signing key {key_id(device_pem)} lives in the same TPM as the "
        f"attestation key {key_id(ak_pem)}" in verdict.proved[0]
    )
    assert handles(tpm, TPM2_HT.TRANSIENT) == []
    # Attestation shares ESAPI's handle of the device key with the signer: the
    # device key still signs afterwards (closing that handle once broke it).
    from appliance.issuer.keys import verify_signature

    assert verify_signature(device_pem, b"after certify", tpm.sign(b"after certify"))


def test_certify_fails_for_another_key(tpm: Tpm, ak_pem: bytes, device_pem: bytes) -> None:
    c = certify(tpm, NONCE, DEVICE_KEY_HANDLE)
    # The verifier expects a different device key (a box swapped for another).
    verdict = verify_certify(c, NONCE, ak_pem, software_pem())
    assert not verdict.ok and any("not the device key" in p for p in verdict.problems)
    # An impostor keeps the genuine certification but swaps in its own public key.
    impostor_pem = software_pem()
    from tpm2_pytss import TPM2B_PUBLIC, TPMT_PUBLIC

    swapped = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.from_pem(impostor_pem))
    bad = dict(c, object_public=base64.b64encode(swapped.marshal()).decode())
    verdict = verify_certify(bad, NONCE, ak_pem, impostor_pem)
    assert not verdict.ok
    assert any("not the name of the public key" in p for p in verdict.problems)


def test_certify_fails_with_wrong_nonce_or_other_ak(
    tpm: Tpm, ak_pem: bytes, device_pem: bytes
) -> None:
    c = certify(tpm, NONCE, DEVICE_KEY_HANDLE)
    assert not verify_certify(c, b"stale-nonce-from-yesterday", ak_pem, device_pem).ok
    assert not verify_certify(c, NONCE, software_pem(), device_pem).ok
    # A quote is not a certification (type confusion is refused).
    q = quote(tpm, NONCE, [23])
    as_cert = dict(c, attest=q["attest"], signature=q["signature"])
    verdict = verify_certify(as_cert, NONCE, ak_pem, device_pem)
    assert not verdict.ok and any("wrong attestation type" in p for p in verdict.problems)
