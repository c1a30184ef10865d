"""The TPM's boot counter goes up once per boot: a broker that restarts or
retries in the same boot reads it again (a marker in /run says this boot was
counted), which spares the TPM's NV write budget. Against swtpm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import Config
from appliance.issuer import choose
from appliance.issuer.tpm import BOOT_NV_INDEX, Tpm
from appliance.issuer.tpm_keys import TpmKeyStore, count_boot


@pytest.fixture
def boot_id(tmp_path: Path) -> Path:
    f = tmp_path / "boot_id"
    f.write_text("11111111-2222-3333-4444-555555555555\n")
    return f


def test_a_restart_in_the_same_boot_does_not_count_again(
    tmp_path: Path, tpm: Tpm, boot_id: Path
) -> None:
    marker = tmp_path / "run" / "tpm-boot-count"
    marker.parent.mkdir()
    first = count_boot(tpm, marker, boot_id)
    assert count_boot(tpm, marker, boot_id) == first  # restart, retry: read, not bumped
    assert tpm.counter_read(BOOT_NV_INDEX) == first
    assert json.loads(marker.read_text())["boot_count"] == first
    assert marker.stat().st_mode & 0o777 == 0o600
    boot_id.write_text("99999999-2222-3333-4444-555555555555\n")  # the next boot
    assert count_boot(tpm, marker, boot_id) == first + 1


def test_a_missing_garbled_or_inflated_marker_means_count(
    tmp_path: Path, tpm: Tpm, boot_id: Path
) -> None:
    marker = tmp_path / "tpm-boot-count"
    first = count_boot(tpm, marker, boot_id)
    marker.write_text("not json")
    assert count_boot(tpm, marker, boot_id) == first + 1
    # A marker claiming more than the TPM ever counted (forged, or the TPM was
    # cleared): the TPM's own value rules, and this start counts.
    marker.write_text(json.dumps({"boot_id": boot_id.read_text().strip(), "boot_count": 10**6}))
    assert count_boot(tpm, marker, boot_id) == first + 2
    # The value is always the TPM's: a marker can hold the count down, never back.
    marker.write_text(json.dumps({"boot_id": boot_id.read_text().strip(), "boot_count": 0}))
    assert count_boot(tpm, marker, boot_id) == first + 2


def test_without_a_marker_every_start_counts(tmp_path: Path, tpm: Tpm) -> None:
    first = TpmKeyStore(tpm, tmp_path / "keys")
    assert TpmKeyStore(tpm, tmp_path / "keys").boot_count == first.boot_count + 1


def test_the_marker_is_the_service_managers_runtime_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/appliance")
    production = Config(state_dir=tmp_path)
    assert choose._boot_marker(production) == Path("/run/appliance/tpm-boot-count")
    assert choose._boot_marker(Config(state_dir=tmp_path, dev=True)) is None
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert choose._boot_marker(production) is None
