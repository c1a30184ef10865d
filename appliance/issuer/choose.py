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
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import Config
from appliance.errors import Unavailable
from appliance.issuer import swtpm
from appliance.issuer.attestation import provision
from appliance.issuer.keys import DevKeyStore, KeyStore
from appliance.issuer.pcr_policy import (
    MEASUREMENT_PCR,
    PolicySigner,
    SignedPolicy,
    measure_at_start,
    measure_installed_appliance,
    read_pcrs,
)
from appliance.issuer.tpm import Tpm, TpmError
from appliance.issuer.tpm_keys import TpmKeyStore
from appliance.issuer.tpm_seal import Sealer

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
    if (config.keys_dir / "device.key").exists():
        return "dev"  # made before the choice was recorded: keep its keys
    return "tpm" if (config.tpm_tcti or swtpm.available()) else "dev"


def open_keystore(config: Config) -> Opened:
    kind = choose_kind(config)
    opened = Opened(DevKeyStore(config.keys_dir), "dev") if kind == "dev" else _open_tpm(config)
    _marker(config).write_text(kind + "\n")
    return opened


def _open_tpm(config: Config) -> Opened:
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
        store = TpmKeyStore(tpm, config.keys_dir, sealer=sealer, boot_marker=_boot_marker(config))
        provision(tpm, config.keys_dir)
    except BaseException:
        tpm.close()
        for fn in reversed(cleanup):
            fn()
        raise
    cleanup.append(store.close)
    return Opened(store, "tpm", tcti, cleanup)


def _boot_marker(config: Config) -> Path | None:
    """Production under systemd: the broker's runtime directory (``/run/appliance``,
    kept across restarts by ``RuntimeDirectoryPreserve=yes``) marks that this
    boot was counted. Elsewhere, every start counts (see ``count_boot``)."""
    run_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if config.dev or not run_dir:
        return None
    return Path(run_dir) / "tpm-boot-count"


def _sealer(config: Config, tpm: Tpm) -> Sealer:
    """Long-lived secrets are sealed to the TPM under PolicyAuthorize (a PCR
    policy signed by the update publisher) plus an auth value.

    At start the appliance measures its own installed code into PCR 23. In
    production the box holds only the publisher's public key
    (``keys/policy-signer.pub.pem``, from the image) and the signed policy
    for the installed code (``keys/pcr-policy.json``, shipped with each
    update): it can never authorise new code itself. In development a local,
    UNSAFE policy key re-authorises whatever code is measured at each start.
    """
    keys = config.keys_dir
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    pcrs = sorted(config.seal_pcrs)
    measure_at_start(tpm, measure_installed_appliance(), pcr=MEASUREMENT_PCR)
    policy_path = keys / "pcr-policy.json"
    if config.dev:
        signer = PolicySigner.load_or_create(keys / "policy-signer.key")
        signer.authorize_pcr_values(
            read_pcrs(tpm, pcrs), note="development: re-authorised at start"
        ).save(policy_path)
        public = signer.public_pem()
    else:
        try:
            public = (keys / "policy-signer.pub.pem").read_bytes()
        except OSError as e:
            raise TpmError(
                f"the update publisher's policy key is missing ({e.strerror}); "
                "the image installs keys/policy-signer.pub.pem"
            ) from None
    return Sealer(
        tpm,
        policy_signer_public_pem=public,
        pcrs=pcrs,
        auth=_seal_auth(keys / "seal-auth"),
        signed_policy=lambda: SignedPolicy.load(policy_path),
    )


def _seal_auth(path: Path) -> bytes:
    """The sealed objects' auth value: a second factor against a program that
    can use the TPM but has not read this 0600 file (it is on the same card,
    so it does nothing against a thief; the PCR policy and the TPM do)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        value = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        return value
