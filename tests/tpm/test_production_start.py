"""Production mode without its TPM: every call answers 503 with the reason
(over a temporary certificate), and once the TPM answers the process exits
with 75 so the service manager restarts it; restarted, it serves for real."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from appliance.issuer.pcr_policy import (
    MEASUREMENT_PCR,
    PolicySigner,
    expected_pcr_value,
    measure_installed_appliance,
)
from appliance.issuer.swtpm import Swtpm, _free_port_pair


def publish_policy(keys: Path, tmp_path: Path) -> None:
    """What the image and each update ship: the publisher's public key and the
    signed PCR policy for the installed code (the private key stays away)."""
    keys.mkdir(parents=True, mode=0o700)
    publisher = PolicySigner.load_or_create(tmp_path / "publisher.key")
    (keys / "policy-signer.pub.pem").write_bytes(publisher.public_pem())
    value = expected_pcr_value(measure_installed_appliance())
    publisher.authorize_pcr_values({MEASUREMENT_PCR: value}).save(keys / "pcr-policy.json")


def up(state: Path, port: int, tpm_port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "up",
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--tpm-tcti",
            f"swtpm:host=127.0.0.1,port={tpm_port}",
            "--retry-seconds",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Production opens the GPIO panel (and fails closed without it): here
        # on gpiozero's mock pins, as no GPIO chip exists on this machine.
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin"},
    )


def healthz(port: int) -> httpx.Response | None:
    try:
        return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2)
    except httpx.HTTPError:
        return None


def test_no_tpm_serves_the_reason_then_restarts_when_it_returns(tmp_path: Path) -> None:
    state = tmp_path / "state"
    publish_policy(state / "keys", tmp_path)
    port, tpm_port = _free_port_pair(), _free_port_pair()
    proc = up(state, port, tpm_port)
    try:
        deadline = time.monotonic() + 30
        r = None
        while time.monotonic() < deadline and (r := healthz(port)) is None:
            time.sleep(0.2)
        assert r is not None and r.status_code == 503, r
        assert "unreachable" in r.json()["problems"][0]
        call = httpx.get(f"https://127.0.0.1:{port}/v1/keys", verify=False)
        assert call.status_code == 503 and "TPM" in call.json()["reason"]

        sim = Swtpm(tmp_path / "swtpm", port=tpm_port).start()  # the TPM comes back
        try:
            assert proc.wait(timeout=30) == 75
            proc = up(state, port, tpm_port)  # what the service manager does
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = healthz(port)
                if r is not None and r.status_code == 200:
                    break
                time.sleep(0.2)
            assert r is not None and r.status_code == 200, r and r.text
            assert r.json()["mode"] == "production" and r.json()["signer"] == "tpm"
            # The sealed secrets opened under the publisher's signed policy.
            assert (state / "keys" / "credential_pepper.sealed").exists()
            assert not (state / "keys" / "policy-signer.key").exists()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            sim.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
