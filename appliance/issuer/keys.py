"""The key seam.

Two keys give the box its authority:

* the **device key** (ECDSA P-256, ES256) signs the boot statement, the
  audit log's session statement and approval receipts. In production it lives
  in the TPM and never leaves it (``tpm_keys.TpmKeyStore``).
* the **token root** (Ed25519) signs Biscuit capability tokens. Signing every
  token inside a TPM costs hundreds of milliseconds, so the root is held in
  memory, and the device key vouches for it (``statement.py``).

``DevKeyStore`` keeps both in files of mode 0600 under the state directory.
It is *unsafe* (a thief with the SD card can copy the keys) and says so: in
the log at every start, in every token and in every checkpoint it signs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import biscuit_auth as biscuit
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

if TYPE_CHECKING:
    from appliance.issuer.tpm import Tpm

log = logging.getLogger("appliance.keys")

UNSAFE_LABEL = "development-unsafe-key"


class Signer(Protocol):
    """Signs bytes with the device key (ES256, DER signature)."""

    key_id: str
    unsafe: bool

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


class KeyStore(Protocol):
    """Where the box's keys live. ``label`` says which kind, for logs and tokens."""

    label: str
    unsafe: bool
    boot_count: int
    """How many times a broker has started on these keys (the TPM's boot counter)."""

    @property
    def tpm(self) -> Tpm | None:
        """The TPM the keys live in; None for the UNSAFE development store. A
        privileged action needs it answering (``tpm.check()``)."""
        ...

    def device_signer(self) -> Signer: ...

    def token_root(self) -> biscuit.KeyPair: ...

    def secret(self, name: str) -> bytes:
        """A long-lived 32-byte secret (credential pepper, HMAC keys), created once."""
        ...

    def epoch(self) -> int:
        """The token epoch: statements and tokens of an older epoch are refused."""
        ...

    def bump_epoch(self) -> int:
        """revoke-all: move to a new epoch; returns it."""
        ...

    def close(self) -> None:
        """Release the keys (an orderly TPM shutdown for the TPM store)."""
        ...


def verify_signature(public_pem: bytes, data: bytes, signature: bytes) -> bool:
    """Check a device-key signature with the public key alone."""
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def key_id(public_pem: bytes) -> str:
    """A short, stable name for a public key: sha256 of its DER form."""
    import hashlib

    der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def write_secret(path: Path, data: bytes) -> None:
    """Create a file readable by the owner only, atomically and never wider."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_secret(path: Path) -> bytes:
    st = path.lstat()
    if st.st_mode & 0o077:
        mode = st.st_mode & 0o777
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); refusing")
    return path.read_bytes()


class _SoftwareSigner:
    def __init__(self, private: ec.EllipticCurvePrivateKey, unsafe: bool):
        self._private = private
        self.unsafe = unsafe
        self.key_id = key_id(self.public_key_pem())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class DevKeyStore:
    """Development keys in ``keys/`` (mode 0600). UNSAFE: for development only."""

    label = UNSAFE_LABEL
    unsafe = True
    tpm: Tpm | None = None

    def __init__(self, keys_dir: Path):
        self.dir = keys_dir
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self._signer = _SoftwareSigner(self._load_device(), unsafe=True)
        self._root = self._load_root()
        # Plain-file stand-ins for the TPM's NV counters: anyone who can write
        # the card can roll them back, which is one more reason this is unsafe.
        self.boot_count: int = self._bump_counter("boot-count")
        # Publish the public half beside it, so `appliance audit verify` can
        # check a log with nothing secret.
        (self.dir / "device.pub.pem").write_bytes(self._signer.public_key_pem())
        log.warning(
            "UNSAFE development key store in %s: keys are plain files, not in a TPM. "
            "Every token and checkpoint is marked %r.",
            self.dir,
            UNSAFE_LABEL,
        )

    def _load_device(self) -> ec.EllipticCurvePrivateKey:
        path = self.dir / "device.key"
        if path.exists():
            key = serialization.load_pem_private_key(read_secret(path), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_secret(path, pem)
        return key

    def _load_root(self) -> biscuit.KeyPair:
        path = self.dir / "token-root.key"
        if path.exists():
            raw = read_secret(path)
            # biscuit-python 0.4.0's type stubs lag its library: both exist.
            private = biscuit.PrivateKey.from_bytes(raw, biscuit.Algorithm.Ed25519)  # type: ignore[call-arg, attr-defined]
            return biscuit.KeyPair.from_private_key(private)
        pair = biscuit.KeyPair()
        write_secret(path, bytes(pair.private_key.to_bytes()))
        return pair

    def device_signer(self) -> Signer:
        return self._signer

    def token_root(self) -> biscuit.KeyPair:
        return self._root

    def _read_counter(self, name: str) -> int:
        path = self.dir / name
        return int(path.read_text().strip()) if path.exists() else 0

    def _bump_counter(self, name: str) -> int:
        value = self._read_counter(name) + 1
        write_secret(self.dir / name, f"{value}\n".encode())  # atomic replace
        return value

    def epoch(self) -> int:
        """The token epoch from ``keys/epoch`` (1 before any revoke-all, like the TPM's)."""
        return self._read_counter("epoch") or self._bump_counter("epoch")

    def bump_epoch(self) -> int:
        self.epoch()  # make sure it starts at 1, then step
        return self._bump_counter("epoch")

    def close(self) -> None:
        """Nothing to release: the keys are plain files."""

    def secret(self, name: str) -> bytes:
        if not name.isidentifier():
            raise ValueError(f"bad secret name {name!r}")
        path = self.dir / f"{name}.secret"
        if path.exists():
            return read_secret(path)
        value = os.urandom(32)
        write_secret(path, value)
        return value


def ephemeral_signer(*, unsafe: bool) -> Signer:
    """A P-256 key that lives in memory for one start (the audit log's session
    key); ``unsafe`` follows the key store that vouches for it."""
    return _SoftwareSigner(ec.generate_private_key(ec.SECP256R1()), unsafe=unsafe)
