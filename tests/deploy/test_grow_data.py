"""The data partition grows to the card on the first boot: the image's own
script, run on an assembled image made larger (a bigger card), by the same
check `make image-check` runs (image-build/growcheck.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import IMAGE_BUILD, make_ca, need, run, stage_minimal_root

GROWCHECK = IMAGE_BUILD / "growcheck.py"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the check grows the file system through a loop device: needs root")
    need("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "e2fsck", "resize2fs", "losetup")
    d = tmp_path_factory.mktemp("grow")
    ca, _, _ = make_ca(d / "keys", "test release")
    root = d / "rootfs"
    stage_minimal_root(root, ca)
    proc = run("sh", IMAGE_BUILD / "stage.sh", root, d / "stage")
    assert proc.returncode == 0, proc.stderr
    # The real layout's partitions, small (the check is about the last one).
    layout = json.loads((IMAGE_BUILD / "layout.json").read_text())
    for part in layout["partitions"]:
        if part["name"] in ("bootA", "data"):
            part["size_mib"] = 64
    (d / "layout.json").write_text(json.dumps(layout))
    out = d / "small.img"
    proc = run(
        sys.executable, IMAGE_BUILD / "imagetool.py", "assemble", "--layout", d / "layout.json",
        *[f"--stage={n}={d / 'stage' / n}" for n in ("autoboot", "boot", "root")], out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_data_partition_grows_to_a_bigger_card(image: Path) -> None:
    proc = run(sys.executable, GROWCHECK, image, "--grow-mib", "96")
    assert proc.returncode == 0, proc.stderr
    assert "data grew by 96 MiB to the card's end (160 MiB)" in proc.stdout
    assert "a second run changes nothing" in proc.stdout
    assert "its ext4 grows to fill it" in proc.stdout


def test_the_script_touches_nothing_but_the_data_partition(image: Path, tmp_path: Path) -> None:
    """Pointed at another partition, or at a card of the image's own size, it
    writes nothing and never fails the boot."""
    card = tmp_path / "card.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(card)], check=True)
    before = card.read_bytes()
    script = IMAGE_BUILD / "grow-data.sh"
    same = run("sh", script, card, "6")  # the image's own size: nothing to do
    assert same.returncode == 0 and card.read_bytes() == before, same.stderr
    with card.open("r+b") as f:
        f.truncate(len(before) + (32 << 20))
    grown = card.read_bytes()
    other = run("sh", script, card, "4")
    assert other.returncode == 0 and "not the data partition" in other.stderr
    assert card.read_bytes() == grown


def test_the_check_sees_an_image_that_does_not_grow(image: Path, tmp_path: Path) -> None:
    """growcheck fails on an image whose fstab does not pull the script in."""
    need("debugfs")
    broken = tmp_path / "broken.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(broken)], check=True)
    sys.path.insert(0, str(IMAGE_BUILD))
    import imagetool

    root = next(p for p in imagetool.read_table(broken) if p["name"] == "rootA")
    fstab = imagetool.ext4_read(broken, root["start"] * 512, "/etc/fstab")
    plain = tmp_path / "fstab"
    plain.write_text(fstab.replace(",x-systemd.requires=appliance-grow-data.service", ""))
    proc = run("debugfs", "-w", "-R", "rm /etc/fstab", f"{broken}?offset={root['start'] * 512}")
    assert proc.returncode == 0, proc.stderr
    proc = run(
        "debugfs", "-w", "-R", f"write {plain} /etc/fstab", f"{broken}?offset={root['start'] * 512}"
    )
    assert proc.returncode == 0, proc.stderr
    proc = run(sys.executable, GROWCHECK, broken)
    assert proc.returncode == 1 and "lacks x-systemd.requires" in proc.stderr
