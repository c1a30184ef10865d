"""overlays/: the device-tree overlay compiles with dtc and applies to a Pi 5
tree; the config.txt fragments name the pins of hardware/pinmap.md and of
the configuration's defaults."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from appliance.config import PanelSettings
from tests.tools import require

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "overlays"


# A stub of the Pi 5's tree: the RP1 GPIO node under its label, as the
# firmware's bcm2712-rpi-5-b.dtb has it (compiled with symbols).
BASE = """/dts-v1/;
/ {
    compatible = "raspberrypi,5-model-b", "brcm,bcm2712";
    #address-cells = <1>;
    #size-cells = <1>;
    rp1_gpio: gpio@d0000 {
        compatible = "raspberrypi,rp1-gpio";
        reg = <0xd0000 0xc000>;
        gpio-controller;
        #gpio-cells = <2>;
        gpio-line-names = %s;
    };
};
"""


def run(*argv: str | Path) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    assert done.returncode == 0, f"{argv[0]} failed: {done.stderr}"
    return done.stdout


def test_panel_overlay_compiles_and_applies(tmp_path: Path) -> None:
    require("dtc", "fdtoverlay", package="device-tree-compiler")
    dtbo = tmp_path / "appliance-panel.dtbo"
    run("dtc", "-@", "-q", "-I", "dts", "-O", "dtb", "-o", dtbo,
        OVERLAYS / "appliance-panel-overlay.dts")  # fmt: skip
    base_dts = tmp_path / "base.dts"
    base_dts.write_text(BASE % ", ".join(f'"GPIO{n}"' for n in range(54)))
    base = tmp_path / "base.dtb"
    run("dtc", "-@", "-q", "-I", "dts", "-O", "dtb", "-o", base, base_dts)
    merged = tmp_path / "merged.dtb"
    run("fdtoverlay", "-i", base, "-o", merged, dtbo)
    names = run("fdtget", "-t", "s", merged, "/gpio@d0000", "gpio-line-names").split()
    # fdtget prints the string list separated by spaces; empty names vanish,
    # so check the named lines by position through the raw property instead.
    raw = subprocess.run(
        ["fdtget", "-t", "bx", str(merged), "/gpio@d0000", "gpio-line-names"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    strings = bytes(int(b, 16) for b in raw).split(b"\0")[:-1]
    assert len(strings) == 54, len(strings)
    panel = PanelSettings()
    assert strings[panel.button_pin] == b"APPROVAL_BUTTON"
    assert strings[panel.led_pin] == b"APPROVAL_LED"
    assert strings[7] == b"TPM_CE1" and strings[24] == b"TPM_RESET"
    assert "APPROVAL_BUTTON" in names


def config_lines(name: str) -> list[str]:
    text = (OVERLAYS / name).read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_fragments_are_config_txt_lines() -> None:
    for fragment in sorted(OVERLAYS.glob("*.txt")):
        for line in config_lines(fragment.name):
            assert re.fullmatch(r"[a-z_0-9]+=\S+", line), f"{fragment.name}: {line!r}"


def test_fragments_use_the_pins_of_the_pin_map_and_the_defaults() -> None:
    panel = PanelSettings()
    lines = config_lines("panel.txt")
    assert f"gpio={panel.button_pin}=ip,pu" in lines
    assert f"gpio={panel.led_pin}=op,dl" in lines
    assert "dtoverlay=appliance-panel" in lines
    assert (OVERLAYS / "appliance-panel-overlay.dts").exists()
    assert "dtoverlay=tpm-slb9670" in config_lines("tpm-slb9670.txt")
    assert "dtparam=pciex1" in config_lines("pcie-ai-hat.txt")
    pinmap = (ROOT / "hardware" / "pinmap.md").read_text()
    for gpio, pin in ((panel.button_pin, 11), (panel.led_pin, 13), (7, 26), (24, 18)):
        assert re.search(rf"\|\s*{pin}\s*\|\s*GPIO {gpio}\b", pinmap), (gpio, pin)
    # Nothing on the panel collides with the TPM's SPI pins or the HAT's ID pins.
    taken = {0, 1, 7, 8, 9, 10, 11, 24}
    assert not {panel.button_pin, panel.led_pin, 5, 6, 13} & taken
    svg = (ROOT / "hardware" / "wiring.svg").read_text()
    assert svg.lstrip().startswith("<svg") or svg.lstrip().startswith("<?xml")
    assert "GPIO 17" in svg and "GPIO 27" in svg
