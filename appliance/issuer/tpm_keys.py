"""The production key store: the device key lives in the TPM.

* **device key**: ECC P-256 at :data:`~appliance.issuer.tpm.DEVICE_KEY_HANDLE`,
  created once, never exportable; it signs boot statements and audit
  checkpoints. Only its public half is written to ``keys/device.pub.pem``.
* **token root**: a fresh Biscuit key pair made in memory at every start and
  never written anywhere; the device key vouches for it in the boot
  statement, so a stolen SD card holds no token-signing key.
* **epoch** and **boot count**: the TPM's NV counters (monotonic, they cannot
  be rolled back by restoring a copy of the card). The boot count goes up
  once per boot, not per start: a broker that restarts (or retries while a
  safety part is missing) reads it again, guided by a marker in ``/run``
  (memory, gone at the next boot), which spares the TPM's NV write budget.
* **secrets**: 32 random bytes each, on disk only sealed to the TPM by the
  sealer (``appliance.issuer.tpm_seal``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Protocol, cast

import biscuit_auth as biscuit

from appliance.errors import ApplianceError
from appliance.issuer.keys import Signer, key_id, read_secret, write_secret
from appliance.issuer.tpm import BOOT_NV_INDEX, EPOCH_NV_INDEX, Tpm, TpmError

log = logging.getLogger("appliance.keys")


class Sealer(Protocol):
    """Binds bytes to this TPM (and its policy); see ``appliance.issuer.tpm_seal``."""

    def seal(self, data: bytes) -> bytes: ...

    def unseal(self, blob: bytes) -> bytes: ...


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def count_boot(tpm: Tpm, marker: Path | None, boot_id_file: Path = BOOT_ID) -> int:
    """The TPM's boot count, incremented once per boot.

    ``marker`` (in ``/run``, which the next boot starts without) records the
    kernel's boot id and the count this boot got. A later start in the same
    boot reads the counter instead of incrementing it, as long as the counter
    is not below the recorded value; anything odd about the marker (missing,
    unreadable, another boot, a value the TPM never reached) means: increment.
    The value used is always the TPM's own, never the marker's. Without a
    marker (development, tests) every start increments, as before.
    """
    if marker is None:
        return tpm.counter_increment(BOOT_NV_INDEX)
    boot_id = boot_id_file.read_text().strip()
    try:
        seen = json.loads(marker.read_text())
        same_boot = seen["boot_id"] == boot_id
        recorded = int(seen["boot_count"])
    except (OSError, ValueError, KeyError, TypeError):
        same_boot, recorded = False, 0
    if same_boot:
        value = tpm.counter_read(BOOT_NV_INDEX)
        if value >= recorded:
            log.info("TPM boot count %d (this boot's, read again)", value)
            return value
        log.warning("boot marker %s records %d, above the TPM's %d: counting anew", marker,
                    recorded, value)  # fmt: skip
    value = tpm.counter_increment(BOOT_NV_INDEX)
    tmp = marker.with_name(marker.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"boot_id": boot_id, "boot_count": value}, f)
    os.replace(tmp, marker)
    return value


class TpmSigner:
    """The device key as a :class:`~appliance.issuer.keys.Signer`: signs inside the TPM."""

    unsafe = False

    def __init__(self, tpm: Tpm, public_pem: bytes):
        self._tpm = tpm
        self._pem = public_pem
        self.key_id = key_id(public_pem)

    def sign(self, data: bytes) -> bytes:
        return self._tpm.sign(data)

    def public_key_pem(self) -> bytes:
        return self._pem


class TpmKeyStore:
    """Keys rooted in the TPM (see the module docstring). Fails closed: TpmError."""

    label = "tpm"
    unsafe = False

    def __init__(
        self,
        tpm: Tpm,
        keys_dir: Path,
        *,
        sealer: object | None = None,
        boot_marker: Path | None = None,
    ):
        self.tpm = tpm
        self.dir = keys_dir
        self.sealer = cast("Sealer | None", sealer)
        self._lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        tpm.check()  # unreachable or in lockout: refuse to start, with the reason
        pem = tpm.ensure_device_key()
        self._signer = TpmSigner(tpm, pem)
        # Public only: lets `appliance audit verify` and desktops check signatures.
        (self.dir / "device.pub.pem").write_bytes(pem)
        self.boot_count: int = count_boot(tpm, boot_marker)
        # In memory only, new at every start; the boot statement binds it to the device key.
        self._root = biscuit.KeyPair()
        log.info(
            "TPM key store: device key %s at %s, boot %d",
            self._signer.key_id,
            tpm.tcti,
            self.boot_count,
        )

    def device_signer(self) -> Signer:
        return self._signer

    def token_root(self) -> biscuit.KeyPair:
        return self._root

    def epoch(self) -> int:
        """The token epoch (TPM NV counter): statements and tokens of older epochs die."""
        return self.tpm.counter_read(EPOCH_NV_INDEX)

    def bump_epoch(self) -> int:
        """revoke-all: increment the epoch counter; returns the new epoch."""
        value = self.tpm.counter_increment(EPOCH_NV_INDEX)
        log.warning("token epoch bumped to %d: every earlier statement and token is void", value)
        return value

    def secret(self, name: str) -> bytes:
        """A long-lived 32-byte secret, kept on disk only sealed to the TPM."""
        if not name.isidentifier():
            raise ValueError(f"bad secret name {name!r}")
        if self.sealer is None:
            raise TpmError("no sealer configured: secrets cannot be kept without one")
        with self._lock:
            cached = self._secrets.get(name)
            if cached is not None:
                return cached
            path = self.dir / f"{name}.sealed"
            try:
                if path.exists():
                    value = self.sealer.unseal(read_secret(path))
                else:
                    value = os.urandom(32)
                    blob = self.sealer.seal(value)
                    write_secret(path, blob)  # atomic: a crash leaves no half-written blob
            except ApplianceError:
                raise
            except Exception as e:  # noqa: BLE001 - any sealer failure means: no secret
                raise TpmError(f"secret {name!r} could not be (un)sealed: {e}") from e
            if len(value) != 32:
                raise TpmError(f"secret {name!r} unsealed to {len(value)} bytes, not 32")
            self._secrets[name] = value
            return value

    def close(self) -> None:
        """Orderly TPM shutdown (see :meth:`Tpm.close`)."""
        self._secrets.clear()
        self.tpm.close()
