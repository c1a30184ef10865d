"""Which key store the broker runs on, chosen once per state directory.

* production: the TPM, always (``device:/dev/tpmrm0`` unless configured);
  without it nothing privileged runs.
* development: the TPM at a configured TCTI, else a swtpm the broker starts
  itself when swtpm is installed, else the UNSAFE development key, loudly.

The choice is written to ``STATE/keystore`` the first time, so a state
directory never silently changes keys (its audit log is signed by one key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import Config
from appliance.errors import Unavailable
from appliance.issuer import swtpm
from appliance.issuer.keys import DevKeyStore, KeyStore

log = logging.getLogger("appliance.keys")

DEVICE_TCTI = "device:/dev/tpmrm0"


@dataclass
class Opened:
    keystore: KeyStore
    kind: str  # "tpm" or "dev"
    tcti: str | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception:  # noqa: BLE001 - closing must go on
                log.exception("closing the key store")


def _marker(config: Config) -> Path:
    return config.state_dir / "keystore"


def choose_kind(config: Config) -> str:
    """ "tpm" or "dev" for this state directory (see the module docstring)."""
    if not config.dev:
        return "tpm"
    marker = _marker(config)
    if marker.exists():
        kind = marker.read_text().strip()
        if config.keystore not in ("auto", kind):
            raise Unavailable(
                f"this state directory was created with the {kind!r} key store; "
                f"it cannot switch to {config.keystore!r} (its audit log is signed by that "
                "key). Use another --state-dir.",
                code="keystore_mismatch",
            )
        return kind
    if config.keystore != "auto":
        return config.keystore
    return "tpm" if (config.tpm_tcti or swtpm.available()) else "dev"


def open_keystore(config: Config) -> Opened:
    kind = choose_kind(config)
    opened = Opened(DevKeyStore(config.keys_dir), "dev") if kind == "dev" else _open_tpm(config)
    _marker(config).write_text(kind + "\n")
    return opened


def _open_tpm(config: Config) -> Opened:
    from appliance.issuer.tpm import Tpm
    from appliance.issuer.tpm_keys import TpmKeyStore

    cleanup: list[Callable[[], None]] = []
    tcti = config.tpm_tcti
    if tcti is None and config.dev:
        sim = swtpm.Swtpm(config.state_dir / "swtpm").start()
        cleanup.append(sim.stop)
        tcti = sim.tcti
        log.warning("development TPM: swtpm started with its state in %s", sim.state_dir)
    tcti = tcti or DEVICE_TCTI
    tpm = Tpm(tcti)
    try:
        sealer = _sealer(config, tpm)
        store = TpmKeyStore(tpm, config.keys_dir, sealer=sealer)
    except BaseException:
        tpm.close()
        for fn in reversed(cleanup):
            fn()
        raise
    cleanup.append(store.close)
    return Opened(store, "tpm", tcti, cleanup)


def _sealer(config: Config, tpm: object) -> object | None:
    """The sealer for long-lived secrets (wired in by the sealing module)."""
    try:
        from appliance.issuer.tpm_seal import sealer_for
    except ImportError:
        return None
    return sealer_for(config, tpm)
