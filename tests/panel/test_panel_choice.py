"""Which panel the broker gets, and production without its button: fail closed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from appliance.approval import VirtualPanel
from appliance.approval.gpio import make_panel
from appliance.config import PanelSettings
from appliance.issuer.swtpm import _free_port_pair


def test_development_gets_the_virtual_panel_production_the_gpio_one() -> None:
    assert isinstance(make_panel(PanelSettings(), dev=True), VirtualPanel)
    with pytest.raises(ValueError, match="auto, gpio or virtual"):
        make_panel(PanelSettings(kind="button"), dev=True)


def test_production_without_gpio_serves_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPIOZERO_")}
    port = _free_port_pair()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "up",
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            str(port),
            "--retry-seconds",
            "60",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        r = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert r is not None and r.status_code == 503, r
        assert "approval panel is unavailable" in r.json()["problems"][0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
