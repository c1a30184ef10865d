#!/usr/bin/env python3
"""Stand-ins for the Raspberry Pi repository's packages, for ``make image-check``.

    make-debs.py OUTDIR

The Raspberry Pi package repository is not reachable where the image check
runs, so the recipe's steps that depend on its packages meet these instead:
Debian packages with the real packages' names, versions and dependencies,
installing files where the real ones do, but holding no Hailo or Raspberry Pi
code. Every one says STAND-IN in its description and in each file it ships.

* ``h10-hailort`` 5.1.1: HailoRT (nothing inside).
* ``python3-h10-hailort`` 5.1.1-1: ``hailo_platform`` in
  /usr/lib/python3/dist-packages, importing numpy as the real one does; its
  ``VDevice`` and ``genai.LLM`` refuse to open a device.
* ``h10-hailort-pcie-driver`` 5.1.1: depends on dkms like the real one, and
  has its DKMS source folder in /usr/src (a dkms.conf naming the module,
  nothing to build); ships a placeholder ``hailo1x_pci.ko`` where DKMS puts
  the built module.
* ``raspi-firmware``: the boot partition's files stage.sh copies
  (``kernel_2712.img``, ``bcm2712-rpi-5-b.dtb``, ``overlays/tpm-slb9670.dtbo``),
  as compiled stubs and placeholders.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

STAND_IN = "STAND-IN built by make image-check (image-build/standins); not the real package"
KERNEL = "6.12.47+rpt-rpi-2712"  # the Raspberry Pi OS kernel seen on an AI HAT+ 2 box

HAILO_PLATFORM = f'''"""{STAND_IN}: hailo_platform as python3-h10-hailort installs it."""
import numpy  # noqa: F401 - the real package imports it at once

__version__ = "5.1.1"
STAND_IN = True


class HailoRTException(Exception):
    pass


class VDevice:
    def __init__(self, *args, **kwargs):
        raise HailoRTException("stand-in hailo_platform: there is no Hailo device here")

    def release(self):
        pass
'''
GENAI = f'''"""{STAND_IN}."""
from hailo_platform import VDevice


class LLM:
    def __init__(self, vdevice, model_path, lora_name="", optimize_memory_on_device=False):
        raise RuntimeError("stand-in hailo_platform: there is no Hailo device here")


__all__ = ["VDevice", "LLM"]
'''
STUB_DTS = """/dts-v1/;
/plugin/;
/ { compatible = "brcm,bcm2712"; };
"""
BOARD_DTS = """/dts-v1/;
/ { compatible = "raspberrypi,5-model-b", "brcm,bcm2712"; model = "STAND-IN"; };
"""


def package(out: Path, name: str, version: str, files: dict[str, bytes], depends: str = "") -> Path:
    with tempfile.TemporaryDirectory() as d:
        tree = Path(d)
        tree.chmod(0o755)
        (tree / "DEBIAN").mkdir()
        control = (
            f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
            f"Maintainer: appliance image check <root@localhost>\n"
            + (f"Depends: {depends}\n" if depends else "")
            + f"Description: {STAND_IN}\n"
        )
        (tree / "DEBIAN/control").write_text(control)
        files = {f"usr/share/doc/{name}/STAND-IN": STAND_IN.encode() + b"\n", **files}
        for rel, data in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
        deb = out / f"{name}_{version}_all.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(deb)],
            check=True,
            capture_output=True,
        )
    return deb


def dtc(source: str, *flags: str) -> bytes:
    return subprocess.run(
        ["dtc", "-q", *flags, "-I", "dts", "-O", "dtb", "-o", "-", "-"],
        input=source.encode(),
        capture_output=True,
        check=True,
    ).stdout


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dist = "usr/lib/python3/dist-packages/hailo_platform"
    package(out, "h10-hailort", "5.1.1", {})
    package(
        out,
        "python3-h10-hailort",
        "5.1.1-1",
        {
            f"{dist}/__init__.py": HAILO_PLATFORM.encode(),
            f"{dist}/genai/__init__.py": GENAI.encode(),
        },
        depends="h10-hailort (= 5.1.1)",
    )
    package(
        out,
        "h10-hailort-pcie-driver",
        "5.1.1",
        {
            f"usr/lib/modules/{KERNEL}/updates/dkms/hailo1x_pci.ko": STAND_IN.encode(),
            "usr/src/hailo1x_pci-5.1.1/dkms.conf": (
                f"# {STAND_IN}\nPACKAGE_NAME=hailo1x_pci\nPACKAGE_VERSION=5.1.1\n"
            ).encode(),
        },
        depends="dkms, h10-hailort (= 5.1.1)",
    )
    package(
        out,
        "raspi-firmware",
        "0.standin",
        {
            "boot/firmware/kernel_2712.img": STAND_IN.encode(),
            "boot/firmware/bcm2712-rpi-5-b.dtb": dtc(BOARD_DTS),
            "boot/firmware/overlays/tpm-slb9670.dtbo": dtc(STUB_DTS, "-@"),
        },
    )
    for deb in sorted(out.glob("*.deb")):
        print(deb.name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(Path(sys.argv[1]))
