"""The image layout: a minimal staged root, assembled by the same script the
Pi recipe and `make image-check` use, passes the image check; broken images
fail it with the reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import IMAGE_BUILD, make_ca, need, run, stage_minimal_root

LAYOUT = IMAGE_BUILD / "layout.json"
sys.path.insert(0, str(IMAGE_BUILD))
import imagetool  # noqa: E402


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("sfdisk", "mkfs.vfat", "mcopy", "mdir", "mkfs.ext4", "debugfs", "systemctl", "openssl")
    d = tmp_path_factory.mktemp("image")
    ca, _, _ = make_ca(d / "keys", "test release")
    root = d / "rootfs"
    stage_minimal_root(root, ca)
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/kernel_2712.img").write_bytes(b"\0" * 4096)
    proc = run("sh", IMAGE_BUILD / "stage.sh", root, d / "stage")
    assert proc.returncode == 0, proc.stderr
    out = d / "appliance.img"
    proc = run(
        sys.executable, IMAGE_BUILD / "imagetool.py", "assemble", "--layout", LAYOUT,
        *[f"--stage={n}={d / 'stage' / n}" for n in ("autoboot", "boot", "root")], out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def test_image_passes_the_check(image: Path) -> None:
    proc = run(sys.executable, IMAGE_BUILD / "imagetool.py", "check", "--layout", LAYOUT,
               "--boot-file", "kernel_2712.img", image)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "GPT with 6 partitions" in proc.stdout
    assert "boots partition 2 (bootA), tryboot partition 3" in proc.stdout
    table = imagetool.read_table(image)
    assert [p["name"] for p in table] == ["autoboot", "bootA", "bootB", "rootA", "rootB", "data"]
    sizes = {p["name"]: p["size"] for p in table}
    assert sizes["rootA"] == sizes["rootB"] and sizes["bootA"] == sizes["bootB"]


def test_boot_files_are_the_recipes(image: Path) -> None:
    table = {p["name"]: p["start"] * 512 for p in imagetool.read_table(image)}
    config = imagetool.fat_read(image, table["bootA"], "config.txt")
    assert "dtoverlay=tpm-slb9670" in config and "dtparam=spi=on" in config
    cmdline = imagetool.fat_read(image, table["bootA"], "cmdline.txt")
    assert "root=PARTLABEL=rootA" in cmdline and "rauc.slot=A" in cmdline
    unit = imagetool.ext4_read(
        image, table["rootA"], "/usr/lib/systemd/system/appliance-agent.service"
    )
    assert "PrivateNetwork=yes" in unit


def test_check_refuses_a_missing_boot_file(image: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.img"
    shutil.copy(image, broken)
    start = next(p["start"] for p in imagetool.read_table(broken) if p["name"] == "bootA") * 512
    subprocess.run(["mdel", "-i", f"{broken}@@{start}", "::/cmdline.txt"], check=True)
    with pytest.raises(imagetool.ImageError, match="missing cmdline.txt"):
        imagetool.check(LAYOUT, broken, [])


def test_check_refuses_a_wrong_partition_table(image: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.img"
    shutil.copy(image, broken)
    # Rename partition 4 (rootA) as an attacker-or-mistake would.
    subprocess.run(["sfdisk", "--quiet", "--part-label", str(broken), "4", "rootX"], check=True)
    with pytest.raises(imagetool.ImageError, match="named 'rootX', not 'rootA'"):
        imagetool.check(LAYOUT, broken, [])


def test_check_refuses_a_root_without_the_units(tmp_path: Path) -> None:
    need("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs")
    stage = tmp_path / "stage"
    for name in ("autoboot", "boot", "root"):
        (stage / name).mkdir(parents=True)
    (stage / "autoboot/autoboot.txt").write_text(
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    )
    (stage / "boot/config.txt").write_text("dtoverlay=tpm-slb9670\n")
    (stage / "boot/cmdline.txt").write_text("root=PARTLABEL=rootA rauc.slot=A\n")
    (stage / "root/etc").mkdir()
    out = tmp_path / "bare.img"
    imagetool.assemble(LAYOUT, {n: stage / n for n in ("autoboot", "boot", "root")}, out)
    with pytest.raises(imagetool.ImageError, match="missing /usr/bin/appliance"):
        imagetool.check(LAYOUT, out, [])


def _pinned(path: Path) -> dict[str, int]:
    """Package name -> how many hashes its pin carries, from a pip-compile file."""
    import re

    pins: dict[str, int] = {}
    name = None
    for line in path.read_text().splitlines():
        if m := re.match(r"([A-Za-z0-9._-]+)==\S+ \\$", line):
            name = m.group(1).lower().replace("_", "-")
            pins[name] = 0
        elif line.strip().startswith("--hash=sha256:") and name:
            pins[name] += 1
    return pins


@pytest.mark.parametrize(
    ("file", "extras"),
    [("requirements-check.txt", ("pi",)), ("requirements-pi.txt", ("pi", "cpu"))],
)
def test_image_requirements_pin_every_dependency(file: str, extras: tuple[str, ...]) -> None:
    """The image installs with --require-hashes from these files alone: a
    dependency added to pyproject.toml and not pinned here would only show up
    as a failing self-test inside the image (regenerate: docs/image.md)."""
    import re
    import tomllib

    project = tomllib.loads((IMAGE_BUILD.parent / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    pins = _pinned(IMAGE_BUILD / file)
    for req in wanted:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")  # type: ignore[union-attr]
        assert pins.get(name, 0) > 0, f"{req} is not pinned with a hash in image-build/{file}"
    text = (IMAGE_BUILD / file).read_text()
    # Nothing of the machine that compiled it: the image uses PyPI alone.
    assert "--extra-index-url" not in text and "--find-links" not in text
