"""TpmKeyStore end to end against swtpm, and the DevKeyStore's epoch/boot counters."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from tpm2_pytss import TPM2B_PRIVATE, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMS_SENSITIVE_CREATE

from appliance.errors import ApplianceError
from appliance.issuer.keys import DevKeyStore, KeyStore, key_id, verify_signature
from appliance.issuer.swtpm import Swtpm
from appliance.issuer.tpm import Tpm, TpmError
from appliance.issuer.tpm_keys import TpmKeyStore
from tests.tpm.conftest import drive_into_lockout, restart


class TpmTestSealer:
    """A minimal real sealer for these tests: a TPM sealed-data object under the
    storage primary (no PCR policy; the policy-bound one is tpm_seal's)."""

    def __init__(self, tpm: Tpm):
        self.tpm = tpm
        self.sealed: list[bytes] = []

    def seal(self, data: bytes) -> bytes:
        template = TPM2B_PUBLIC.parse(
            "keyedhash", objectAttributes="userwithauth|fixedtpm|fixedparent|noda"
        )
        with self.tpm.use() as esapi:
            primary = self.tpm.storage_primary(esapi)
            try:
                sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=data))
                private, public, *_ = esapi.create(primary, sensitive, template)
            finally:
                esapi.flush_context(primary)
        blob = public.marshal() + private.marshal()
        self.sealed.append(blob)
        return blob

    def unseal(self, blob: bytes) -> bytes:
        public, n = TPM2B_PUBLIC.unmarshal(blob)
        private, _ = TPM2B_PRIVATE.unmarshal(blob[n:])
        with self.tpm.use() as esapi:
            primary = self.tpm.storage_primary(esapi)
            obj = None
            try:
                obj = esapi.load(primary, private, public)
                return bytes(esapi.unseal(obj))
            finally:
                for h in (obj, primary):
                    if h is not None:
                        esapi.flush_context(h)


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_tpm_key_store_end_to_end(tmp_path: Path, simulator: Swtpm, tpm: Tpm) -> None:
    keys_dir = tmp_path / "keys"
    store = TpmKeyStore(tpm, keys_dir)
    ks: KeyStore = store  # satisfies the seam
    assert ks.label == "tpm" and ks.unsafe is False
    signer = store.device_signer()
    assert signer.unsafe is False
    pem = signer.public_key_pem()
    assert signer.key_id == key_id(pem)
    assert (keys_dir / "device.pub.pem").read_bytes() == pem
    assert b"PRIVATE" not in pem
    sig = signer.sign(b"boot statement")
    assert verify_signature(pem, b"boot statement", sig)
    assert not verify_signature(pem, b"boot statement!", sig)
    # Only the public key is on the card; the token root is nowhere on disk
    # (not in keys/, not in the TPM's own state files either).
    assert sorted(p.name for p in keys_dir.iterdir()) == ["device.pub.pem"]
    root_private = bytes(store.token_root().private_key.to_bytes())
    disk = _all_bytes(tmp_path)
    for form in (
        root_private,
        root_private.hex().encode(),
        base64.b64encode(root_private),
        base64.urlsafe_b64encode(root_private).rstrip(b"="),
    ):
        assert form not in disk


def test_boot_count_rises_and_the_root_is_new_each_start(
    tmp_path: Path, simulator: Swtpm, tpm: Tpm
) -> None:
    first = TpmKeyStore(tpm, tmp_path / "keys")
    second = TpmKeyStore(tpm, tmp_path / "keys")
    assert second.boot_count == first.boot_count + 1
    assert bytes(second.token_root().public_key.to_bytes()) != bytes(
        first.token_root().public_key.to_bytes()
    )
    assert second.device_signer().public_key_pem() == first.device_signer().public_key_pem()
    restart(simulator)  # a reboot of the TPM does not reset the count
    third = TpmKeyStore(Tpm(simulator.tcti), tmp_path / "keys")
    try:
        assert third.boot_count == second.boot_count + 1
    finally:
        third.close()


def test_epoch_and_revoke_all(tmp_path: Path, simulator: Swtpm, tpm: Tpm) -> None:
    store = TpmKeyStore(tpm, tmp_path / "keys")
    e0 = store.epoch()
    assert store.bump_epoch() == e0 + 1
    assert store.epoch() == e0 + 1
    # Deleting the keys directory (or restoring an old copy of it) does not
    # bring the old epoch back: it lives in the TPM.
    for p in (tmp_path / "keys").iterdir():
        p.unlink()
    again = TpmKeyStore(tpm, tmp_path / "keys")
    assert again.epoch() == e0 + 1
    # TPM gone during revoke-all: refused with the reason, epoch not half-moved.
    simulator.stop()
    with pytest.raises(TpmError, match="unreachable"):
        again.bump_epoch()
    restart(simulator)
    assert again.epoch() == e0 + 1


def test_construction_refuses_an_unreachable_tpm(tmp_path: Path, simulator: Swtpm) -> None:
    tpm = Tpm(simulator.tcti)
    simulator.stop()
    with pytest.raises(TpmError, match="unreachable"):
        TpmKeyStore(tpm, tmp_path / "keys")
    assert not (tmp_path / "keys" / "device.pub.pem").exists()


def test_construction_refuses_a_tpm_in_lockout(tmp_path: Path, tpm: Tpm) -> None:
    drive_into_lockout(tpm)
    with pytest.raises(TpmError, match="lockout"):
        TpmKeyStore(tpm, tmp_path / "keys")
    tpm.reset_lockout()
    assert TpmKeyStore(tpm, tmp_path / "keys").boot_count >= 1


def test_secrets_need_a_sealer(tmp_path: Path, tpm: Tpm) -> None:
    store = TpmKeyStore(tpm, tmp_path / "keys")
    with pytest.raises(TpmError, match="no sealer"):
        store.secret("credential_pepper")
    assert not list((tmp_path / "keys").glob("*.sealed"))


def test_secrets_are_on_disk_only_sealed(tmp_path: Path, tpm: Tpm) -> None:
    sealer = TpmTestSealer(tpm)
    store = TpmKeyStore(tpm, tmp_path / "keys", sealer=sealer)
    value = store.secret("credential_pepper")
    assert len(value) == 32
    assert store.secret("credential_pepper") == value
    path = tmp_path / "keys" / "credential_pepper.sealed"
    assert path.read_bytes() == sealer.sealed[0]
    assert path.stat().st_mode & 0o777 == 0o600
    assert value not in _all_bytes(tmp_path / "keys")
    assert value.hex().encode() not in _all_bytes(tmp_path / "keys")
    # A fresh start unseals the same secret from the blob.
    again = TpmKeyStore(tpm, tmp_path / "keys", sealer=TpmTestSealer(tpm))
    assert again.secret("credential_pepper") == value
    assert store.secret("hmac_key") != value
    with pytest.raises(ValueError):
        store.secret("../escape")


def test_a_sealer_failure_is_a_tpm_error(tmp_path: Path, tpm: Tpm) -> None:
    sealer = TpmTestSealer(tpm)
    store = TpmKeyStore(tpm, tmp_path / "keys", sealer=sealer)
    store.secret("pepper")
    path = tmp_path / "keys" / "pepper.sealed"
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF  # tamper with the sealed private part
    path.write_bytes(bytes(blob))
    path.chmod(0o600)
    fresh = TpmKeyStore(tpm, tmp_path / "keys", sealer=TpmTestSealer(tpm))
    with pytest.raises(ApplianceError) as err:
        fresh.secret("pepper")
    assert isinstance(err.value, TpmError) and err.value.status == 503
    assert tpm.loaded_handles() == {"transient": [], "loaded_sessions": []}


def test_close_shuts_the_connection(tmp_path: Path, tpm: Tpm) -> None:
    store = TpmKeyStore(tpm, tmp_path / "keys")
    store.close()
    assert tpm._esapi is None
    assert verify_signature(  # and a later call reconnects
        store.device_signer().public_key_pem(), b"x", store.device_signer().sign(b"x")
    )


# -- the development store speaks the same seam ------------------------------------


def test_dev_key_store_epoch_and_boot_count(tmp_path: Path) -> None:
    first = DevKeyStore(tmp_path / "keys")
    assert first.boot_count == 1
    assert first.epoch() == 1
    assert first.bump_epoch() == 2
    assert first.epoch() == 2
    second = DevKeyStore(tmp_path / "keys")
    assert second.boot_count == 2
    assert second.epoch() == 2
    ks: KeyStore = second
    ks.close()
