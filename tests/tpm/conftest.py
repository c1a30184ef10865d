"""A swtpm per test module (state in a temp dir), and a Tpm connected to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.issuer.swtpm import Swtpm
from appliance.issuer.tpm import Tpm
from tests.tools import require


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Swtpm]:
    require("swtpm", package="swtpm")
    sim = Swtpm(tmp_path / "swtpm").start()
    yield sim
    sim.stop()


@pytest.fixture
def tpm(simulator: Swtpm) -> Iterator[Tpm]:
    t = Tpm(simulator.tcti)
    yield t
    t.close()


def restart(sim: Swtpm) -> None:
    """Stop and start the simulator on the same port with the same state (a reboot)."""
    sim.stop()
    sim.start()


def drive_into_lockout(tpm: Tpm, max_tries: int = 2) -> None:
    """Put the TPM into dictionary-attack lockout, quickly and reversibly.

    Sets a small failure limit with the (empty, fresh-TPM) lockout auth, then
    presents a wrong password for a DA-protected key until the TPM locks out."""
    from tpm2_pytss import (
        TPM2_ALG,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPMS_SENSITIVE_CREATE,
        TPMT_SIG_SCHEME,
        TSS2_Exception,
    )

    with tpm.use() as esapi:
        esapi.dictionary_attack_parameters(max_tries, 60, 60)
        primary = tpm.storage_primary(esapi)
        try:
            template = TPM2B_PUBLIC.parse(
                "ecc256:ecdsa-sha256",
                # no noDA: failures on this key count towards the lockout
                objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
            )
            sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=b"right"))
            private, public, *_ = esapi.create(primary, sensitive, template)
            key = esapi.load(primary, private, public)
        finally:
            esapi.flush_context(primary)
        try:
            esapi.tr_set_auth(key, b"wrong")
            for _ in range(max_tries):
                try:
                    esapi.sign(key, b"\0" * 32, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
                except TSS2_Exception:
                    pass
                else:
                    raise AssertionError("a wrong password was accepted")
        finally:
            esapi.flush_context(key)
