"""The TPM layer against a real swtpm: device key, NV counters, PCRs, lockout, hygiene."""

from __future__ import annotations

import contextlib
import hashlib
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CC,
    TPM2_ECC,
    TPM2_SE,
    TPM2B_DATA,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_NV,
    TPMA_OBJECT,
    TPMS_NV_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TSS2_Exception,
)

from appliance.issuer.keys import verify_signature
from appliance.issuer.swtpm import Swtpm
from appliance.issuer.tpm import (
    BOOT_NV_INDEX,
    DEVICE_KEY_HANDLE,
    EPOCH_NV_INDEX,
    Tpm,
    TpmError,
    _status_from_properties,
)
from tests.tpm.conftest import drive_into_lockout, restart

# -- the device key ------------------------------------------------------------


def test_device_key_persists_across_a_restart(simulator: Swtpm, tpm: Tpm) -> None:
    pem = tpm.ensure_device_key()
    assert tpm.ensure_device_key() == pem  # second call reads, does not re-create
    restart(simulator)
    again = Tpm(simulator.tcti)
    try:
        assert again.ensure_device_key() == pem
        assert again.device_public_pem() == pem
        assert verify_signature(pem, b"after reboot", again.sign(b"after reboot"))
    finally:
        again.close()


def test_device_key_is_a_non_exportable_noda_p256_signing_key(tpm: Tpm) -> None:
    tpm.ensure_device_key()
    area = tpm.device_public().publicArea
    attrs = area.objectAttributes
    for flag in (
        TPMA_OBJECT.FIXEDTPM,
        TPMA_OBJECT.FIXEDPARENT,
        TPMA_OBJECT.SENSITIVEDATAORIGIN,
        TPMA_OBJECT.SIGN_ENCRYPT,
        TPMA_OBJECT.NODA,
    ):
        assert attrs & flag, f"device key lacks {flag!s}"
    assert not attrs & TPMA_OBJECT.RESTRICTED
    assert area.type == TPM2_ALG.ECC
    assert area.parameters.eccDetail.curveID == TPM2_ECC.NIST_P256
    # ReadPublic gives a public key and nothing else.
    key = serialization.load_pem_public_key(tpm.device_public_pem())
    assert isinstance(key, ec.EllipticCurvePublicKey)


def _duplicate_policy(esapi: ESAPI) -> bytes:
    """The policy digest that allows TPM2_Duplicate (PolicyCommandCode)."""
    trial = esapi.start_auth_session(
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        TPM2_SE.TRIAL,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )
    try:
        esapi.policy_command_code(trial, TPM2_CC.Duplicate)
        return bytes(esapi.policy_get_digest(trial))
    finally:
        esapi.flush_context(trial)


def _try_duplicate(esapi: ESAPI, key: ESYS_TR) -> bytes:
    """Export ``key`` with TPM2_Duplicate to no new parent (plain, unwrapped)."""
    session = esapi.start_auth_session(
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        TPM2_SE.POLICY,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )
    try:
        esapi.policy_command_code(session, TPM2_CC.Duplicate)
        _, private, _ = esapi.duplicate(
            key,
            ESYS_TR.NULL,
            TPM2B_DATA(),
            TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
            session1=session,
        )
        return bytes(private)
    finally:
        with contextlib.suppress(TSS2_Exception):
            esapi.flush_context(session)


def test_duplicate_is_refused_for_the_device_key_and_fixed_keys(tpm: Tpm) -> None:
    tpm.ensure_device_key()
    with tpm.use() as esapi:
        digest = _duplicate_policy(esapi)
        primary = tpm.storage_primary(esapi)
        try:
            # Control: the same attack against an exportable key succeeds, so
            # the attempt itself is well formed...
            template = TPM2B_PUBLIC.parse(
                "ecc256:ecdsa-sha256",
                objectAttributes="sensitivedataorigin|userwithauth|sign",
                authPolicy=digest,
            )
            priv, pub, *_ = esapi.create(primary, TPM2B_SENSITIVE_CREATE(), template)
            loose = esapi.load(primary, priv, pub)
            try:
                assert _try_duplicate(esapi, loose)
            finally:
                esapi.flush_context(loose)
            # ...while fixedTPM|fixedParent stop it even when the key's own
            # policy would allow duplication...
            template = TPM2B_PUBLIC.parse(
                "ecc256:ecdsa-sha256",
                objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                authPolicy=digest,
            )
            priv, pub, *_ = esapi.create(primary, TPM2B_SENSITIVE_CREATE(), template)
            fixed = esapi.load(primary, priv, pub)
            try:
                with pytest.raises(TSS2_Exception, match="attributes"):
                    _try_duplicate(esapi, fixed)
            finally:
                esapi.flush_context(fixed)
        finally:
            esapi.flush_context(primary)
        # ...and the device key itself refuses.
        with pytest.raises(TSS2_Exception):
            _try_duplicate(esapi, tpm._device(esapi))
    assert tpm.loaded_handles() == {"transient": [], "loaded_sessions": []}


def test_signatures_verify_with_cryptography_and_only_for_their_data(tpm: Tpm) -> None:
    pem = tpm.ensure_device_key()
    sig = tpm.sign(b"checkpoint 42")
    r, s = decode_dss_signature(sig)  # DER
    assert r > 0 and s > 0
    assert verify_signature(pem, b"checkpoint 42", sig)
    assert not verify_signature(pem, b"checkpoint 43", sig)
    other_pem = (  # a different P-256 key: must not verify
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert not verify_signature(other_pem, b"checkpoint 42", sig)


def test_sign_without_a_device_key_refuses_rather_than_making_one(tpm: Tpm) -> None:
    with pytest.raises(TpmError, match="no device key"):
        tpm.sign(b"x")
    with tpm.use() as esapi:  # and did not create one behind our back
        assert not tpm._handle_exists(esapi, DEVICE_KEY_HANDLE)


def test_a_foreign_key_at_the_device_handle_is_refused(tpm: Tpm) -> None:
    # Something else (a restricted storage key here) sits at our handle.
    with tpm.use() as esapi:
        primary = tpm.storage_primary(esapi)
        try:
            esapi.evict_control(ESYS_TR.OWNER, primary, DEVICE_KEY_HANDLE)
        finally:
            esapi.flush_context(primary)
    with pytest.raises(TpmError, match="not an appliance device key"):
        tpm.ensure_device_key()
    with pytest.raises(TpmError, match="not an appliance device key"):
        tpm.sign(b"x")


# -- NV counters -------------------------------------------------------------------


def test_counters_are_monotonic_across_restarts(simulator: Swtpm, tpm: Tpm) -> None:
    e0 = tpm.counter_read(EPOCH_NV_INDEX)
    assert e0 >= 1
    assert tpm.counter_read(EPOCH_NV_INDEX) == e0  # reading does not move it
    assert tpm.counter_increment(EPOCH_NV_INDEX) == e0 + 1
    b0 = tpm.counter_read(BOOT_NV_INDEX)
    restart(simulator)
    again = Tpm(simulator.tcti)
    try:
        assert again.counter_read(EPOCH_NV_INDEX) == e0 + 1
        assert again.counter_increment(EPOCH_NV_INDEX) == e0 + 2
        assert again.counter_read(BOOT_NV_INDEX) == b0  # independent counters
    finally:
        again.close()
    with tpm.use() as esapi:  # noDA, counter type, owner-written
        tr = esapi.tr_from_tpmpublic(EPOCH_NV_INDEX)
        public, _ = esapi.nv_read_public(tr)
        attrs = TPMA_NV(public.nvPublic.attributes)
        esapi.tr_close(tr)
    assert attrs & TPMA_NV.NO_DA and attrs & TPMA_NV.OWNERWRITE
    assert not attrs & TPMA_NV.AUTHWRITE  # the empty index auth cannot bump it


def test_a_pre_planted_index_is_not_taken_for_our_counter(tpm: Tpm) -> None:
    # An ordinary, freely writable index at the epoch's number (rollback bait).
    info = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=EPOCH_NV_INDEX,
            nameAlg=TPM2_ALG.SHA256,
            attributes=TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA,
            dataSize=8,
        )
    )
    with tpm.use() as esapi:
        esapi.tr_close(esapi.nv_define_space(None, info, ESYS_TR.OWNER))
    with pytest.raises(TpmError, match="not the appliance's counter"):
        tpm.counter_read(EPOCH_NV_INDEX)


# -- PCRs ------------------------------------------------------------------------


def test_pcr_extend_and_read(tpm: Tpm) -> None:
    before = tpm.pcr_read([16])[16]
    digest = hashlib.sha256(b"appliance code").digest()
    tpm.pcr_extend(16, digest)
    assert tpm.pcr_read([16])[16] == hashlib.sha256(before + digest).digest()
    everything = tpm.pcr_read(list(range(24)))  # more than one TPM2_PCR_Read call
    assert sorted(everything) == list(range(24))
    assert everything[16] == hashlib.sha256(before + digest).digest()
    with pytest.raises(ValueError):
        tpm.pcr_extend(16, b"short")
    with pytest.raises(ValueError):
        tpm.pcr_read([24])


# -- reachability and lockout ----------------------------------------------------------


def test_status_of_a_healthy_tpm(tpm: Tpm) -> None:
    st = tpm.status()
    assert st["reachable"] and not st["in_lockout"]
    assert st["lockout_counter"] == 0 and st["max_tries"] > 0
    assert st["manufacturer"] == "IBM"  # libtpms
    tpm.check()


def test_tpm_gone_mid_run_then_back(simulator: Swtpm, tpm: Tpm) -> None:
    pem = tpm.ensure_device_key()
    epoch = tpm.counter_read(EPOCH_NV_INDEX)
    simulator.stop()
    for call in (
        lambda: tpm.sign(b"x"),
        lambda: tpm.counter_read(EPOCH_NV_INDEX),
        lambda: tpm.counter_increment(EPOCH_NV_INDEX),
        tpm.check,
        tpm.ensure_device_key,
    ):
        with pytest.raises(TpmError) as err:
            call()
        assert "unreachable" in err.value.reason and simulator.tcti in err.value.reason
        assert err.value.status == 503
    st = tpm.status()
    assert st["reachable"] is False and "unreachable" in st["reason"]
    restart(simulator)  # same port, same state: the TPM is back
    tpm.check()
    assert verify_signature(pem, b"back", tpm.sign(b"back"))
    assert tpm.counter_read(EPOCH_NV_INDEX) == epoch  # the failed increment did nothing


def test_lockout_is_reported_and_machine_keys_are_unaffected(simulator: Swtpm, tpm: Tpm) -> None:
    pem = tpm.ensure_device_key()
    # A wrong password on the noDA device key does not count (raw connection:
    # the Tpm object keeps its own, correct, auth).
    raw = ESAPI(simulator.tcti)
    try:
        dev = raw.tr_from_tpmpublic(DEVICE_KEY_HANDLE)
        raw.tr_set_auth(dev, b"wrong")
        for _ in range(3):
            with pytest.raises(TSS2_Exception):
                raw.sign(dev, b"\0" * 32, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    finally:
        raw.close()
    assert tpm.status()["lockout_counter"] == 0
    drive_into_lockout(tpm, max_tries=2)
    st = tpm.status()
    assert st["in_lockout"] and st["lockout_counter"] == 2 and st["max_tries"] == 2
    with pytest.raises(TpmError, match="dictionary-attack lockout") as err:
        tpm.check()
    assert "60 s" in err.value.reason  # says how it recovers
    # noDA: the device key still works in lockout (check() is what stops the broker).
    assert verify_signature(pem, b"x", tpm.sign(b"x"))
    tpm.reset_lockout(b"")  # recovery with the lockout auth
    assert tpm.status()["lockout_counter"] == 0
    tpm.check()


def test_close_is_an_orderly_shutdown(simulator: Swtpm, tpm: Tpm) -> None:
    tpm.counter_increment(BOOT_NV_INDEX)
    tpm.close()
    restart(simulator)
    assert tpm.status()["last_shutdown_orderly"] is True
    tpm.counter_increment(BOOT_NV_INDEX)
    tpm._drop()  # a killed broker / power cut: no TPM2_Shutdown
    restart(simulator)
    assert tpm.status()["last_shutdown_orderly"] is False


def test_status_from_properties_reads_the_inlockout_bit() -> None:
    # TPMA_PERMANENT.inLockout is bit 9; PT_VAR (0x200) is TPM_PT_PERMANENT.
    st = _status_from_properties({0x200: 1 << 9, 0x20E: 5, 0x20F: 5, 0x210: 7}, "t")
    assert st["in_lockout"] and st["lockout_counter"] == 5 and st["lockout_interval_s"] == 7
    assert not _status_from_properties({0x200: 0}, "t")["in_lockout"]


# -- hygiene ---------------------------------------------------------------------


def test_transient_slots_are_not_exhausted(tpm: Tpm) -> None:
    for _ in range(5):
        tpm.ensure_device_key()
    for i in range(20):
        tpm.sign(b"%d" % i)
    for _ in range(5):
        tpm.counter_increment(BOOT_NV_INDEX)
        tpm.pcr_read([0, 16])
    assert tpm.loaded_handles() == {"transient": [], "loaded_sessions": []}


def test_a_failed_key_creation_leaves_nothing_loaded(
    tpm: Tpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the TPM refuses the evict (e.g. NV full) after create+load.
    def refuse(self: ESAPI, *a: object, **k: object) -> None:
        raise TSS2_Exception(0x14B)  # TPM_RC_NV_SPACE

    monkeypatch.setattr(ESAPI, "evict_control", refuse)
    for _ in range(4):  # more attempts than swtpm has slots
        with pytest.raises(TpmError):
            tpm.ensure_device_key()
    monkeypatch.undo()
    assert tpm.loaded_handles() == {"transient": [], "loaded_sessions": []}
    pem = tpm.ensure_device_key()  # and it works once the TPM cooperates
    assert verify_signature(pem, b"ok", tpm.sign(b"ok"))


def test_concurrent_signing_from_threads(tpm: Tpm) -> None:
    pem = tpm.ensure_device_key()
    bad: list[object] = []

    def worker(n: int) -> None:
        for i in range(10):
            msg = b"%d-%d" % (n, i)
            try:
                if not verify_signature(pem, msg, tpm.sign(msg)):
                    bad.append(msg)
            except Exception as e:  # noqa: BLE001 - surfaced by the assert below
                bad.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    assert tpm.loaded_handles() == {"transient": [], "loaded_sessions": []}
