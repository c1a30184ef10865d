"""A swtpm per test module (state in a temp dir), and a Tpm connected to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.issuer import swtpm
from appliance.issuer.swtpm import Swtpm
from appliance.issuer.tpm import Tpm

if not swtpm.available():
    pytest.skip("swtpm is not installed (make test installs it)", allow_module_level=True)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Swtpm]:
    sim = Swtpm(tmp_path / "swtpm").start()
    yield sim
    sim.stop()


@pytest.fixture
def tpm(simulator: Swtpm) -> Iterator[Tpm]:
    t = Tpm(simulator.tcti)
    yield t
    t.close()
