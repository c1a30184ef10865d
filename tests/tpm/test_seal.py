"""Sealed secrets under a signed PCR policy plus an auth value, against swtpm."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tpm2_pytss import TPM2_CAP, TPM2_HT, TPMA_SESSION

from appliance.issuer.pcr_policy import (
    MEASUREMENT_PCR,
    PolicySigner,
    SealError,
    SignedPolicy,
    expected_pcr_value,
    extend_measurement,
    measure_at_start,
    measure_code,
    package_files,
    pcr_policy_digest,
    read_pcrs,
    software_pcr_policy_digest,
)
from appliance.issuer.swtpm import Swtpm
from appliance.issuer.tpm import Tpm, TpmError
from appliance.issuer.tpm_seal import REASON_AUTH, REASON_PCR, REASON_SIGNER, Sealer

AUTH = b"machine-auth-value-0123456789abc"
SECRET = b"the credential pepper: 0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture
def signer(tmp_path: Path) -> PolicySigner:
    return PolicySigner.load_or_create(tmp_path / "keys" / "policy.key")


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    return tmp_path / "sealed" / "pcr-policy.json"


def approve_current(tpm: Tpm, signer: PolicySigner, policy_file: Path) -> SignedPolicy:
    """The publisher approves the PCR values the box has now; the box stores the file."""
    values = read_pcrs(tpm, [MEASUREMENT_PCR])
    policy = signer.authorize_pcr_values(values, note="test")
    policy_file.parent.mkdir(parents=True, exist_ok=True)
    policy.save(policy_file)
    return policy


def make_sealer(tpm: Tpm, signer_pem: bytes, policy_file: Path, auth: bytes = AUTH) -> Sealer:
    return Sealer(
        tpm,
        policy_signer_public_pem=signer_pem,
        pcrs=[MEASUREMENT_PCR],
        auth=auth,
        signed_policy=lambda: SignedPolicy.load(policy_file),
    )


@pytest.fixture
def sealer(tpm: Tpm, signer: PolicySigner, policy_file: Path) -> Sealer:
    extend_measurement(tpm, MEASUREMENT_PCR, b"\x11" * 32)
    approve_current(tpm, signer, policy_file)
    return make_sealer(tpm, signer.public_pem(), policy_file)


def transient_handles(tpm: Tpm) -> list[int]:
    with tpm.use() as esapi:
        _, data = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HT.TRANSIENT << 24, 64)
        transients = list(data.data.handles)
        _, data = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HT.LOADED_SESSION << 24, 64)
        sessions = list(data.data.handles)
    return transients + sessions


# ---------------------------------------------------------------- round trips


def test_seal_unseal_round_trip(sealer: Sealer) -> None:
    blob = sealer.seal(SECRET)
    assert SECRET not in blob  # the blob on disk holds only TPM-wrapped material
    assert sealer.unseal(blob) == SECRET
    doc = json.loads(blob)
    assert doc["format"] == "appliance-sealed-v1" and doc["pcrs"] == [MEASUREMENT_PCR]


def test_large_secret_uses_an_envelope(sealer: Sealer) -> None:
    tls_key = b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 1800 + b"\n-----END PRIVATE KEY-----\n"
    blob = sealer.seal(tls_key)
    assert json.loads(blob)["mode"] == "envelope"
    assert sealer.unseal(blob) == tls_key
    # Altering the software-encrypted part is detected, not decrypted to junk.
    doc = json.loads(blob)
    ct = bytearray(base64.b64decode(doc["ciphertext"]))
    ct[5] ^= 1
    doc["ciphertext"] = base64.b64encode(bytes(ct)).decode()
    with pytest.raises(SealError, match="altered"):
        sealer.unseal(json.dumps(doc).encode())


def test_tampered_private_blob_is_refused(sealer: Sealer) -> None:
    doc = json.loads(sealer.seal(SECRET))
    priv = bytearray(base64.b64decode(doc["private"]))
    priv[-3] ^= 0x40
    doc["private"] = base64.b64encode(bytes(priv)).decode()
    with pytest.raises(TpmError):
        sealer.unseal(json.dumps(doc).encode())
    assert transient_handles(sealer.tpm) == []


# ------------------------------------------------------- PCR policy + update


def test_unseal_fails_after_pcr_change_and_succeeds_after_authorised_update(
    tpm: Tpm, signer: PolicySigner, policy_file: Path, tmp_path: Path
) -> None:
    """The issue's test: the bound PCR changes -> refused; the publisher signs a
    policy for the new value -> the same blob unseals again (no re-seal)."""
    code = tmp_path / "code" / "appliance"
    code.mkdir(parents=True)
    (code / "broker.py").write_text("print('v1')\n")
    v1 = measure_code(package_files(code))
    measure_at_start(tpm, v1)
    # The publisher computes the expected PCR from the code alone (no TPM).
    policy_file.parent.mkdir(parents=True)
    signer.authorize_pcr_values({MEASUREMENT_PCR: expected_pcr_value(v1)}).save(policy_file)
    sealer = make_sealer(tpm, signer.public_pem(), policy_file)
    blob = sealer.seal(SECRET)
    assert sealer.unseal(blob) == SECRET

    # The bound PCR changes (something else extends it): refused, with the reason.
    extend_measurement(tpm, MEASUREMENT_PCR, b"\x66" * 32)
    with pytest.raises(SealError) as refused:
        sealer.unseal(blob)
    assert refused.value.reason == REASON_PCR
    assert refused.value.code == "unseal_refused" and refused.value.status == 503

    # An update: new code, measured at the next start; the old policy refuses it...
    (code / "broker.py").write_text("print('v2')\n")
    v2 = measure_code(package_files(code))
    assert v2 != v1
    measure_at_start(tpm, v2)  # PCR 23 is reset and re-measured
    assert read_pcrs(tpm, [MEASUREMENT_PCR])[MEASUREMENT_PCR] == expected_pcr_value(v2)
    with pytest.raises(SealError, match="do not match"):
        sealer.unseal(blob)
    # ...until the update ships a policy signed for v2, stored beside the blobs.
    signer.authorize_pcr_values({MEASUREMENT_PCR: expected_pcr_value(v2)}).save(policy_file)
    assert sealer.unseal(blob) == SECRET
    assert transient_handles(tpm) == []


def test_policy_signed_by_another_key_is_refused(
    tpm: Tpm, sealer: Sealer, policy_file: Path, tmp_path: Path
) -> None:
    blob = sealer.seal(SECRET)
    mallory = PolicySigner.load_or_create(tmp_path / "mallory.key")
    forged = mallory.authorize_pcr_values(read_pcrs(tpm, [MEASUREMENT_PCR]))
    forged.save(policy_file)
    with pytest.raises(SealError) as refused:
        sealer.unseal(blob)
    assert refused.value.reason == REASON_SIGNER


def test_forged_signature_is_refused_by_the_tpm_itself(
    tpm: Tpm, sealer: Sealer, signer: PolicySigner, policy_file: Path, tmp_path: Path
) -> None:
    """Even with the software pre-check bypassed, the TPM's VerifySignature refuses."""
    blob = sealer.seal(SECRET)
    mallory = PolicySigner.load_or_create(tmp_path / "mallory.key")
    forged = mallory.authorize_pcr_values(read_pcrs(tpm, [MEASUREMENT_PCR]))
    forged.save(policy_file)
    sealer._check_policy = lambda policy, pcrs, ref: base64.b64decode(  # type: ignore[method-assign]
        policy.signature
    )
    with pytest.raises(SealError) as refused:
        sealer.unseal(blob)
    assert refused.value.reason == REASON_SIGNER
    assert transient_handles(tpm) == []


def test_policy_for_other_values_is_refused_even_if_signed(
    tpm: Tpm, sealer: Sealer, signer: PolicySigner, policy_file: Path
) -> None:
    blob = sealer.seal(SECRET)
    signer.authorize_pcr_values({MEASUREMENT_PCR: b"\x42" * 32}).save(policy_file)
    with pytest.raises(SealError) as refused:
        sealer.unseal(blob)
    assert refused.value.reason == REASON_PCR


def test_missing_or_garbled_policy_file_fails_closed(sealer: Sealer, policy_file: Path) -> None:
    blob = sealer.seal(SECRET)
    policy_file.write_text("{not json")
    with pytest.raises(SealError, match="no usable signed PCR policy"):
        sealer.unseal(blob)
    policy_file.unlink()
    with pytest.raises(SealError, match="no usable signed PCR policy"):
        sealer.unseal(blob)
    assert transient_handles(sealer.tpm) == []


def test_blob_for_another_policy_key_is_refused(
    tpm: Tpm, sealer: Sealer, policy_file: Path, tmp_path: Path
) -> None:
    other = PolicySigner.load_or_create(tmp_path / "other.key")
    other.authorize_pcr_values(read_pcrs(tpm, [MEASUREMENT_PCR])).save(tmp_path / "other.json")
    other_sealer = make_sealer(tpm, other.public_pem(), tmp_path / "other.json")
    blob = other_sealer.seal(SECRET)
    assert other_sealer.unseal(blob) == SECRET
    with pytest.raises(SealError, match="another policy key"):
        sealer.unseal(blob)


def test_policy_key_with_a_short_coordinate_works(tpm: Tpm, tmp_path: Path) -> None:
    """About one P-256 key in 128 has a coordinate below 2**248; its TPM public
    area must still carry 32 bytes (a 31-byte one is refused by the TPM)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    while True:
        key = ec.generate_private_key(ec.SECP256R1())
        nums = key.public_key().public_numbers()
        if nums.x < 1 << 248 or nums.y < 1 << 248:
            break
    short = PolicySigner(key)
    short.authorize_pcr_values(read_pcrs(tpm, [MEASUREMENT_PCR])).save(tmp_path / "p.json")
    sealer = make_sealer(tpm, short.public_pem(), tmp_path / "p.json")
    assert sealer.unseal(sealer.seal(SECRET)) == SECRET


def test_wrong_auth_value_is_refused(
    tpm: Tpm, sealer: Sealer, signer: PolicySigner, policy_file: Path
) -> None:
    blob = sealer.seal(SECRET)
    thief = make_sealer(tpm, signer.public_pem(), policy_file, auth=b"guess")
    with pytest.raises(SealError) as refused:
        thief.unseal(blob)
    assert refused.value.reason == REASON_AUTH
    assert transient_handles(tpm) == []
    assert sealer.unseal(blob) == SECRET  # noDA: the right auth still works at once


# -------------------------------------------------------- sessions and hygiene


def test_unseal_session_is_salted_and_encrypted(sealer: Sealer) -> None:
    blob = sealer.seal(SECRET)
    assert sealer.unseal(blob) == SECRET
    info = sealer.last_unseal_session
    attrs = TPMA_SESSION(info["attributes"])
    assert attrs & TPMA_SESSION.ENCRYPT  # the response (the secret) is encrypted
    assert attrs & TPMA_SESSION.DECRYPT
    assert attrs & TPMA_SESSION.CONTINUESESSION
    assert info["symmetric"] == "aes128cfb" and "primary" in str(info["salted_with"])


class WireRecorder:
    """A TCP relay between ESAPI and swtpm that keeps every byte: what someone
    probing the SPI bus would see."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.seen = bytearray()  # both directions
        self.to_tpm = bytearray()  # the command stream only
        self.lock = threading.Lock()
        self.listeners: list[socket.socket] = []
        for _ in range(50):  # a port pair (command, control) like swtpm's
            a = socket.socket()
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            b = socket.socket()
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                a.close()
                b.close()
                continue
            self.port = port
            self.listeners = [a, b]
            break
        for i, lst in enumerate(self.listeners):
            lst.listen(4)
            threading.Thread(target=self._accept, args=(lst, target_port + i), daemon=True).start()

    def _accept(self, lst: socket.socket, port: int) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", port))
            commands = port == self.target
            for src, dst, out in ((client, upstream, commands), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, out), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, commands: bool) -> None:
        try:
            while chunk := src.recv(65536):
                with self.lock:
                    self.seen += chunk
                    if commands:
                        self.to_tpm += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def start_auth_sessions(self) -> list[dict[str, int]]:
        """TPM2_StartAuthSession commands sent: (tpmKey, salt size, session type)."""
        out = []
        buf = bytes(self.to_tpm)
        while len(buf) >= 10:
            size = int.from_bytes(buf[2:6], "big")
            cmd, buf = buf[:size], buf[size:]
            if int.from_bytes(cmd[6:10], "big") != 0x176:  # TPM_CC_StartAuthSession
                continue
            tpm_key = int.from_bytes(cmd[10:14], "big")
            off = 18  # after the tpmKey and bind handles (no authorisation area)
            off += 2 + int.from_bytes(cmd[off : off + 2], "big")  # nonceCaller
            salt_size = int.from_bytes(cmd[off : off + 2], "big")
            session_type = cmd[off + 2 + salt_size]
            out.append({"tpm_key": tpm_key, "salt": salt_size, "type": session_type})
        return out

    def close(self) -> None:
        for lst in self.listeners:
            lst.close()


@pytest.fixture
def recorder(simulator: Swtpm) -> Iterator[WireRecorder]:
    rec = WireRecorder(simulator.port or 0)
    yield rec
    rec.close()


def test_secret_and_auth_never_cross_the_bus_in_clear(
    simulator: Swtpm, recorder: WireRecorder, signer: PolicySigner, policy_file: Path
) -> None:
    tpm = Tpm(f"swtpm:host=127.0.0.1,port={recorder.port}")
    try:
        approve_current(tpm, signer, policy_file)
        sealer = make_sealer(tpm, signer.public_pem(), policy_file)
        # The recorder does see plaintext parameters (control: TPM2_Hash in clear).
        with tpm.use() as esapi:
            from tpm2_pytss import TPM2_ALG

            esapi.hash(b"plaintext-probe-1234567890", TPM2_ALG.SHA256)
        assert b"plaintext-probe-1234567890" in recorder.seen
        blob = sealer.seal(SECRET)
        assert sealer.unseal(blob) == SECRET
    finally:
        tpm.close()
    seen = bytes(recorder.seen)
    # Both sessions (seal: HMAC 0x00, unseal: policy 0x01) were salted with a
    # TPM key: an unsalted session's key is computable from the nonces on the
    # wire, which would make the parameter encryption worthless.
    sessions = recorder.start_auth_sessions()
    assert sorted(s["type"] for s in sessions) == [0x00, 0x01]
    assert all(s["tpm_key"] != 0x40000007 and s["salt"] > 0 for s in sessions)
    assert SECRET not in seen and SECRET[:16] not in seen
    assert AUTH not in seen and AUTH[:16] not in seen


def test_no_transient_handles_leak(sealer: Sealer, tpm: Tpm, policy_file: Path) -> None:
    for i in range(10):
        secret = f"secret number {i}".encode()
        assert sealer.unseal(sealer.seal(secret)) == secret
    # Refusals flush too.
    blob = sealer.seal(SECRET)
    extend_measurement(tpm, MEASUREMENT_PCR, b"\x01" * 32)
    for _ in range(3):
        with pytest.raises(SealError):
            sealer.unseal(blob)
    assert transient_handles(tpm) == []


# -------------------------------------------------------------- PCR helpers


def test_trial_session_and_software_digests_agree(tpm: Tpm) -> None:
    extend_measurement(tpm, 23, b"\x22" * 32)
    current = read_pcrs(tpm, [16, 23])
    assert pcr_policy_digest(tpm, [16, 23]) == software_pcr_policy_digest(current)
    other = {16: b"\x01" * 32, 23: b"\x02" * 32}
    assert pcr_policy_digest(tpm, [16, 23], other) == software_pcr_policy_digest(other)
    assert software_pcr_policy_digest(other) != software_pcr_policy_digest(current)


def test_extend_matches_expected_value_and_start_is_idempotent(tpm: Tpm) -> None:
    m = b"\x33" * 32
    assert measure_at_start(tpm, m) == expected_pcr_value(m)
    # A broker restart in the same boot does not extend again.
    assert measure_at_start(tpm, m) == expected_pcr_value(m)
    assert read_pcrs(tpm, [23])[23] == expected_pcr_value(m)


def test_measure_code_is_deterministic_and_sensitive(tmp_path: Path) -> None:
    a = tmp_path / "a" / "appliance"
    (a / "sub").mkdir(parents=True)
    (a / "x.py").write_text("x = 1\n")
    (a / "sub" / "y.py").write_text("y = 2\n")
    (a / "__pycache__").mkdir()
    (a / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    m = measure_code(package_files(a))
    # Same tree elsewhere, files listed in another order: same measurement.
    b = tmp_path / "b" / "appliance"
    (b / "sub").mkdir(parents=True)
    (b / "sub" / "y.py").write_text("y = 2\n")
    (b / "x.py").write_text("x = 1\n")
    assert measure_code(list(reversed(package_files(b)))) == m
    (b / "x.py").write_text("x = 2\n")
    assert measure_code(package_files(b)) != m
    (b / "x.py").write_text("x = 1\n")
    (b / "x.py").rename(b / "z.py")
    assert measure_code(package_files(b)) != m


def test_dev_policy_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "policy.key"
    first = PolicySigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.unsafe
    assert PolicySigner.load_or_create(path).public_pem() == first.public_pem()
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        PolicySigner.load_or_create(path)


def test_signed_policy_round_trips_as_json(signer: PolicySigner, tmp_path: Path) -> None:
    policy = signer.authorize_pcr_values({23: b"\x05" * 32}, b"ref")
    policy.save(tmp_path / "p.json")
    loaded = SignedPolicy.load(tmp_path / "p.json")
    assert loaded == policy
    assert loaded.pcr_values == {"23": "05" * 32}
    assert json.loads(policy.to_json())["signer_kid"] == signer.key_id


def test_publisher_tool_signs_the_policy_the_box_will_measure(tmp_path: Path) -> None:
    """The publisher measures the built tree; the box measures its installed
    package; both give the same PCR value, so the signed policy fits."""
    import appliance
    from appliance.issuer.pcr_policy import main, measure_installed_appliance

    package = Path(appliance.__file__).resolve().parent
    out = tmp_path / "pcr-policy.json"
    assert main(["authorize", "--key", str(tmp_path / "k.pem"), str(package), str(out)]) == 0
    policy = SignedPolicy.load(out)
    want = expected_pcr_value(measure_installed_appliance())
    assert policy.pcr_values == {"23": want.hex()}
    assert policy.pcr_policy_digest == software_pcr_policy_digest({23: want}).hex()
