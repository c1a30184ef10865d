"""`appliance selftest --hardware` on the box: the rows for what the first
boot needs, read from a box-shaped tree (the seam is selftest.ROOT). Each row
passes on a good box and fails, saying what to look at, on a broken one."""

from __future__ import annotations

import hashlib
import shutil
import sys
import types
from pathlib import Path

import pytest

from appliance import selftest
from tests.deploy.conftest import IMAGE_BUILD, run

CODER = "hailo-qwen2.5-coder-1.5b-instruct.toml"


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "box"
    assert run("sh", IMAGE_BUILD / "install-deploy.sh", root).returncode == 0
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "appliance-mark-good.service").symlink_to(
        "/usr/lib/systemd/system/appliance-mark-good.service"
    )
    # The agent's HEF (a test file, and its manifest recording its hash).
    hef = b"a HEF"
    models = root / "usr/share/appliance/models"
    manifest = models / CODER
    text = manifest.read_text()
    pinned = text.split('sha256 = "')[1].split('"')[0]
    manifest.write_text(text.replace(pinned, hashlib.sha256(hef).hexdigest()))
    path = root / "usr/local/hailo/resources/models/hailo10h/Qwen2.5-Coder-1.5B-Instruct.hef"
    path.parent.mkdir(parents=True)
    path.write_bytes(hef)
    for node in ("dev/hailo0", "dev/watchdog0"):
        (root / node).parent.mkdir(parents=True, exist_ok=True)
        (root / node).touch()
    (root / "sys/class/watchdog/watchdog0").mkdir(parents=True)
    (root / "sys/class/watchdog/watchdog0/state").write_text("active\n")
    (root / "proc").mkdir()
    (root / "proc/modules").write_text("hailo1x_pci 131072 0 - Live 0x0\nspidev 20480 0\n")
    (root / "proc/mounts").write_text(
        "/dev/mmcblk0p4 / ext4 ro,relatime 0 0\n/dev/mmcblk0p4 / ext4 rw,noatime 0 0\n"
    )
    (root / "proc/cmdline").write_text("root=PARTLABEL=rootA rw rootwait rauc.slot=A\n")
    monkeypatch.setattr(selftest, "ROOT", root)
    # The runtime, as the venv sees python3-h10-hailort's package.
    platform = types.ModuleType("hailo_platform")
    platform.__version__ = "5.1.1"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hailo_platform", platform)
    monkeypatch.setitem(sys.modules, "hailo_platform.genai", types.ModuleType("genai"))
    return root


def rows(root: Path) -> dict[str, selftest.Check]:
    out = {}
    for part in (selftest._hailo, selftest._agent_model, selftest._watchdog,
                 selftest._mark_good, selftest._root_rw):  # fmt: skip
        out.update({c.name: c for c in selftest._guarded(part)})
    return out


def test_a_good_box_passes_every_row(box: Path) -> None:
    r = rows(box)
    assert {n: c.result for n, c in r.items()} == dict.fromkeys(
        ["Hailo device", "Hailo module", "Hailo runtime", "agent model", "watchdog",
         "mark-good", "root read-write"], "pass"
    )  # fmt: skip
    assert r["Hailo device"].detail == "/dev/hailo0"
    assert r["Hailo module"].detail == "hailo1x_pci"
    assert "hailo_platform 5.1.1" in r["Hailo runtime"].detail
    assert "Qwen2.5-Coder-1.5B-Instruct.hef sha256 " in r["agent model"].detail
    assert "active; RuntimeWatchdogSec=15s" in r["watchdog"].detail
    assert r["mark-good"].detail == "booted slot A is good"


def test_the_newer_driver_node_counts(box: Path) -> None:
    (box / "dev/hailo0").unlink()
    (box / "dev/h1x-0").touch()
    assert rows(box)["Hailo device"].detail == "/dev/h1x-0"
    (box / "dev/h1x-0").unlink()
    assert rows(box)["Hailo device"].result == "fail"


def test_each_row_fails_on_a_broken_box(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (box / "proc/modules").write_text("spidev 20480 0\n")
    sys.modules["hailo_platform"].__version__ = "5.2.0"  # type: ignore[attr-defined]
    hef = box / "usr/local/hailo/resources/models/hailo10h/Qwen2.5-Coder-1.5B-Instruct.hef"
    hef.write_bytes(b"another HEF")
    (box / "sys/class/watchdog/watchdog0/state").write_text("inactive\n")
    (box / "data/rauc").mkdir(parents=True)
    (box / "data/rauc/pending").write_text("A\n")  # booted A on trial, not marked good
    (box / "proc/mounts").write_text("/dev/mmcblk0p4 / ext4 ro,relatime 0 0\n")
    r = rows(box)
    assert {n for n, c in r.items() if c.result == "fail"} == {
        "Hailo module", "Hailo runtime", "agent model", "watchdog", "mark-good",
        "root read-write"}  # fmt: skip
    assert "HEFs are for HailoRT 5.1.1" in r["Hailo runtime"].detail
    assert "does not match its manifest" in r["agent model"].detail
    assert "not petting it" in r["watchdog"].detail
    assert "trial boot and not marked good" in r["mark-good"].detail
    shutil.rmtree(box / "usr/lib/systemd/system.conf.d")
    (box / "etc/systemd/system/multi-user.target.wants/appliance-mark-good.service").unlink()
    r = rows(box)
    assert "RuntimeWatchdogSec" in r["watchdog"].detail
    assert "not enabled" in r["mark-good"].detail


def test_the_rows_are_part_of_the_hardware_self_test(box: Path, tmp_path: Path) -> None:
    from appliance.config import Config

    config = Config(state_dir=tmp_path, tpm_tcti="device:/nonexistent/tpmrm0")
    names = [c.name for c in selftest.hardware_checks(config, ask=print, press_timeout_s=0)]
    for name in ("Hailo device", "Hailo module", "Hailo runtime", "agent model", "watchdog",
                 "mark-good", "root read-write"):  # fmt: skip
        assert name in names
