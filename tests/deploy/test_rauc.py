"""Signed A/B updates: a bundle signed by the release key verifies; a
tampered, unsigned or foreign-signed bundle is refused with RAUC's reason.
The tryboot backend falls back to the last good slot until the new one is
marked good."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.deploy.conftest import IMAGE_BUILD, make_ca, need, run


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need("openssl")
    d = tmp_path_factory.mktemp("keys")
    ca, cert, key = make_ca(d / "release", "test release")
    other_ca, other_cert, other_key = make_ca(d / "other", "someone else")
    return {"ca": ca, "cert": cert, "key": key, "other_cert": other_cert, "other_key": other_key}


def make_images(d: Path) -> tuple[Path, Path]:
    """A small root (ext4) and boot (FAT) image, as an update carries."""
    need("mkfs.ext4", "mkfs.vfat", "mcopy")
    (d / "rootfs/etc").mkdir(parents=True)
    (d / "rootfs/etc/os-release").write_text("NAME=appliance\n")
    (d / "rootfs/blob").write_bytes(os.urandom(256 * 1024))
    root, boot = d / "root.ext4", d / "boot.vfat"
    assert run("mkfs.ext4", "-q", "-F", "-d", d / "rootfs", root, "4M").returncode == 0
    assert run("mkfs.vfat", "-C", boot, "2048").returncode == 0
    cmdline = d / "cmdline.txt"
    cmdline.write_text("root=PARTLABEL=rootA rootwait rauc.slot=A\n")
    assert run("mcopy", "-i", boot, cmdline, "::/").returncode == 0
    return boot, root


def bundle(d: Path, cert: Path, key: Path, name: str = "update.raucb") -> Path:
    need("rauc", "mksquashfs")
    boot, root = make_images(d / f"images-{name}")
    out = d / name
    proc = run("sh", IMAGE_BUILD / "make-bundle.sh", boot, root, "1.1", cert, key, out)
    assert proc.returncode == 0, proc.stderr
    return out


def verify(path: Path, ca: Path, tmp: Path) -> tuple[bool, str]:
    """What the box does before installing: the signature against its keyring
    (rauc info), and every payload block against the signed root hash (rauc
    extract; an install reads the payload through dm-verity the same way)."""
    info = run("rauc", "info", f"--keyring={ca}", path)
    if info.returncode != 0:
        return False, info.stderr
    out = tmp / f"extract-{path.name}"
    shutil.rmtree(out, ignore_errors=True)
    extract = run("rauc", "extract", f"--keyring={ca}", path, out)
    return extract.returncode == 0, info.stdout + extract.stderr


def test_signed_bundle_verifies(keys: dict[str, Path], tmp_path: Path) -> None:
    path = bundle(tmp_path, keys["cert"], keys["key"])
    ok, text = verify(path, keys["ca"], tmp_path)
    assert ok, text
    assert "safe-agent-appliance-rpi5" in text and "verity" in text
    assert (tmp_path / "extract-update.raucb/root.ext4").exists()


def test_tampered_payload_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    path = bundle(tmp_path, keys["cert"], keys["key"])
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit inside the payload
    path.write_bytes(bytes(data))
    ok, text = verify(path, keys["ca"], tmp_path)
    assert not ok and "corrupted" in text, text


def test_tampered_signature_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    path = bundle(tmp_path, keys["cert"], keys["key"])
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x01  # inside the CMS signature at the end of the bundle
    path.write_bytes(bytes(data))
    ok, text = verify(path, keys["ca"], tmp_path)
    assert not ok, text


def test_bundle_signed_by_another_key_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    path = bundle(tmp_path, keys["other_cert"], keys["other_key"])
    ok, text = verify(path, keys["ca"], tmp_path)
    assert not ok and "signature" in text.lower(), text


def test_unsigned_bundle_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    """The payload alone (a squashfs without the signature RAUC appends)."""
    need("mksquashfs")
    (tmp_path / "content").mkdir()
    (tmp_path / "content/manifest.raucm").write_text(
        "[update]\ncompatible=safe-agent-appliance-rpi5\nversion=9\n"
        "[image.rootfs]\nfilename=root.ext4\n"
    )
    (tmp_path / "content/root.ext4").write_bytes(os.urandom(64 * 1024))
    path = tmp_path / "unsigned.raucb"
    assert run("mksquashfs", tmp_path / "content", path, "-quiet", "-noappend").returncode == 0
    ok, text = verify(path, keys["ca"], tmp_path)
    assert not ok, text


PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE" + rb" KEY-----\s+[A-Za-z0-9+/]{40}")


def test_release_key_is_not_in_the_repository() -> None:
    repo = IMAGE_BUILD.parent
    files = run("git", "ls-files", cwd=repo).stdout.split()
    assert files, "not a git checkout"
    for name in files:
        path = repo / name
        if path.is_file() and PEM_KEY.search(path.read_bytes()):
            raise AssertionError(f"{name} holds a private key")


# ---------------------------------------------------------------------- tryboot
BACKEND = IMAGE_BUILD / "rauc/tryboot-backend"


class Box:
    """The tryboot backend's files, as on the box: autoboot.txt, its state
    folder on the data partition, and the kernel command line."""

    def __init__(self, d: Path) -> None:
        self.autoboot, self.state, self.cmdline = d / "autoboot.txt", d / "state", d / "cmdline"
        self.autoboot.write_text(
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        )
        self.boot(tryboot=False)

    def backend(self, *args: str) -> tuple[int, str]:
        env = {"PATH": "/usr/bin:/bin", "TRYBOOT_AUTOBOOT": str(self.autoboot),
               "TRYBOOT_STATE": str(self.state), "TRYBOOT_CMDLINE": str(self.cmdline)}  # fmt: skip
        proc = run("sh", BACKEND, *args, env=env)
        return proc.returncode, (proc.stdout or proc.stderr).strip()

    def boot(self, tryboot: bool) -> str:
        """What the Pi 5 firmware does: read autoboot.txt, take [tryboot]'s
        partition only when the reboot asked for it, else [all]'s."""
        section = "tryboot" if tryboot else "all"
        text = self.autoboot.read_text()
        part = text.split(f"[{section}]")[1].split("boot_partition=")[1].split()[0]
        slot = {"2": "A", "3": "B"}[part]
        self.cmdline.write_text(f"console=tty1 root=PARTLABEL=root{slot} rauc.slot={slot}\n")
        return slot


def test_tryboot_update_then_commit(tmp_path: Path) -> None:
    box = Box(tmp_path)
    assert box.backend("get-current") == (0, "A")
    assert box.backend("get-primary") == (0, "A")
    # RAUC wrote slot B and makes it primary: a trial, [all] still boots A.
    assert box.backend("set-primary", "B")[0] == 0
    assert box.backend("get-primary") == (0, "B")
    assert box.boot(tryboot=False) == "A"
    # reboot "0 tryboot": B, once; it comes up and rauc-mark-good commits it.
    assert box.boot(tryboot=True) == "B"
    assert box.backend("get-current") == (0, "B")
    assert box.backend("set-state", "B", "good")[0] == 0
    assert box.boot(tryboot=False) == "B"
    assert "boot_partition=3" in box.autoboot.read_text().split("[tryboot]")[0]


def test_failed_trial_boot_falls_back(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.backend("set-primary", "B")
    assert box.boot(tryboot=True) == "B"
    # B hangs: the watchdog resets the board. No tryboot flag this time.
    assert box.boot(tryboot=False) == "A"
    assert box.backend("get-current") == (0, "A")
    # RAUC marks the slot it could not keep as bad; A stays the default.
    assert box.backend("set-state", "B", "bad")[0] == 0
    assert box.backend("get-state", "B") == (0, "bad")
    assert box.backend("get-primary") == (0, "A")
    assert box.boot(tryboot=False) == "A"


def test_backend_refuses_nonsense(tmp_path: Path) -> None:
    box = Box(tmp_path)
    rc, why = box.backend("set-primary", "C")
    assert rc != 0 and "unknown slot" in why
    rc, why = box.backend("set-state", "A", "bad")
    assert rc != 0 and "last good slot" in why
    rc, why = box.backend("reboot-now")
    assert rc != 0 and "unknown command" in why
    box.autoboot.write_text("[all]\nboot_partition=7\n")
    rc, why = box.backend("get-primary")
    assert rc != 0 and "boot_partition" in why


def test_system_conf_names_both_slots_and_the_backend() -> None:
    import configparser

    conf = configparser.ConfigParser()
    conf.read(IMAGE_BUILD / "rauc/system.conf")
    assert conf["system"]["bootloader"] == "custom"
    assert conf["system"]["bundle-formats"] == "-plain"
    assert conf["handlers"]["bootloader-custom-backend"] == "/usr/lib/appliance/tryboot-backend"
    assert {conf[f"slot.rootfs.{i}"]["bootname"] for i in (0, 1)} == {"A", "B"}
    assert conf["slot.boot.0"]["parent"] == "rootfs.0"


def test_bundle_hook_points_each_boot_slot_at_its_root(tmp_path: Path) -> None:
    (tmp_path / "cmdline.txt").write_text(
        "console=tty1 root=PARTLABEL=rootA rootwait rauc.slot=A\n"
    )
    env = {"PATH": "/usr/bin:/bin", "RAUC_SLOT_CLASS": "boot", "RAUC_SLOT_NAME": "boot.1",
           "RAUC_SLOT_MOUNT_POINT": str(tmp_path)}  # fmt: skip
    proc = run("sh", IMAGE_BUILD / "rauc/hook", "slot-post-install", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cmdline.txt").read_text() == (
        "console=tty1 root=PARTLABEL=rootB rootwait rauc.slot=B\n"
    )


def test_bundle_hook_points_each_root_slot_at_itself(tmp_path: Path) -> None:
    """The root image is the same for both slots: its fstab line for / is
    rewritten for the slot it lands in, as cmdline.txt is for the boot slot."""
    (tmp_path / "etc").mkdir()
    fstab = tmp_path / "etc/fstab"
    fstab.write_text(
        "# comment\nPARTLABEL=rootA    /               ext4  defaults,noatime  0 1\n"
        "PARTLABEL=data     /data           ext4  defaults  0 2\n"
    )
    env = {"PATH": "/usr/bin:/bin", "RAUC_SLOT_CLASS": "rootfs", "RAUC_SLOT_NAME": "rootfs.1",
           "RAUC_SLOT_MOUNT_POINT": str(tmp_path)}  # fmt: skip
    proc = run("sh", IMAGE_BUILD / "rauc/hook", "slot-post-install", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = fstab.read_text().splitlines()
    assert lines[1].startswith("PARTLABEL=rootB / ") and lines[2].startswith("PARTLABEL=data")
    fstab.write_text("PARTLABEL=data /data ext4 defaults 0 2\n")  # no line for /: refused
    proc = run("sh", IMAGE_BUILD / "rauc/hook", "slot-post-install", env=env)
    assert proc.returncode == 1 and "mounts no rootB" in proc.stderr


def test_the_bundle_runs_the_hook_for_the_root_slot_too() -> None:
    text = (IMAGE_BUILD / "make-bundle.sh").read_text()
    rootfs = text.split("[image.rootfs]")[1].split("[image.boot]")[0]
    assert "hooks=post-install" in rootfs
