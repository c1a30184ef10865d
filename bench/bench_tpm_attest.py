"""Sealing and attestation times on swtpm, against baselines from the same run.

Starts a private swtpm, provisions the attestation key and a device key, then
prints median times for: seal, unseal (the full salted, encrypted policy
session: PolicyPCR, LoadExternal, VerifySignature, PolicyAuthorize,
PolicyAuthValue, Unseal), quote, certify, and the desktop's software
verify_quote. Baselines: one device-key sign on the same TPM (for the TPM
operations) and one raw ECDSA P-256 verification with `cryptography` (for the
software verifier).

    .venv/bin/python bench/bench_tpm_attest.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from appliance.issuer import swtpm  # noqa: E402
from appliance.issuer.attestation import (  # noqa: E402
    certify,
    provision,
    quote,
    verify_certify,
    verify_quote,
)
from appliance.issuer.pcr_policy import (  # noqa: E402
    MEASUREMENT_PCR,
    PolicySigner,
    measure_at_start,
    read_pcrs,
)
from appliance.issuer.tpm import DEVICE_KEY_HANDLE, Tpm  # noqa: E402
from appliance.issuer.tpm_seal import Sealer  # noqa: E402

NONCE = b"bench-nonce-0123456789abcdef"


def median_ms(fn: Callable[[], object], n: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the smoke test")
    args = parser.parse_args()
    n = 5 if args.quick else 200
    if not swtpm.available():
        print("swtpm is not installed: 0 measurements (apt-get install swtpm)")
        return 0
    logging.disable(logging.WARNING)  # the development policy key warns, by design

    with tempfile.TemporaryDirectory() as tmp, swtpm.Swtpm(Path(tmp) / "state") as sim:
        tpm = Tpm(sim.tcti)
        try:
            keys = Path(tmp) / "keys"
            provision(tpm, keys)
            ak_pem = (keys / "ak.pub.pem").read_bytes()
            device_pem = tpm.ensure_device_key()
            measure_at_start(tpm, b"\x42" * 32)

            signer = PolicySigner.load_or_create(keys / "policy.key")
            policy = signer.authorize_pcr_values(read_pcrs(tpm, [MEASUREMENT_PCR]))
            sealer = Sealer(
                tpm,
                policy_signer_public_pem=signer.public_pem(),
                pcrs=[MEASUREMENT_PCR],
                auth=b"bench-auth",
                signed_policy=lambda: policy,
            )
            secret = b"\x5a" * 32
            blob = sealer.seal(secret)
            assert sealer.unseal(blob) == secret
            q = quote(tpm, NONCE, [MEASUREMENT_PCR])
            c = certify(tpm, NONCE, DEVICE_KEY_HANDLE)
            assert verify_quote(q, NONCE, ak_pem).ok
            assert verify_certify(c, NONCE, ak_pem, device_pem).ok

            sw_key = ec.generate_private_key(ec.SECP256R1())
            sw_sig = sw_key.sign(b"x" * 120, ec.ECDSA(hashes.SHA256()))
            sw_pub = sw_key.public_key()

            def primary() -> None:
                with tpm.use() as esapi:
                    esapi.flush_context(tpm.storage_primary(esapi))

            rows = [
                ("device-key sign (TPM baseline)", median_ms(lambda: tpm.sign(b"x"), n)),
                ("storage primary create + flush", median_ms(primary, n)),
                ("seal (salted HMAC session, create)", median_ms(lambda: sealer.seal(secret), n)),
                ("unseal (full policy session)", median_ms(lambda: sealer.unseal(blob), n)),
                ("quote (1 PCR, + PCR read)", median_ms(lambda: quote(tpm, NONCE, [23]), n)),
                (
                    "certify device key",
                    median_ms(lambda: certify(tpm, NONCE, DEVICE_KEY_HANDLE), n),
                ),
            ]
            sw_rows = [
                (
                    "raw ECDSA P-256 verify (software baseline)",
                    median_ms(
                        lambda: sw_pub.verify(sw_sig, b"x" * 120, ec.ECDSA(hashes.SHA256())),
                        n * 10,
                    ),
                ),
                (
                    "verify_quote (software)",
                    median_ms(lambda: verify_quote(q, NONCE, ak_pem), n * 10),
                ),
                (
                    "verify_certify (software)",
                    median_ms(lambda: verify_certify(c, NONCE, ak_pem, device_pem), n * 10),
                ),
            ]
        finally:
            tpm.close()

    print(f"TPM operations on swtpm, median of {n} (ratio to one device-key sign):")
    base = rows[0][1]
    for name, ms in rows:
        print(f"  {name:<40} {ms:8.2f} ms   x{ms / base:5.1f}")
    print("Desktop-side verification, software only (ratio to one raw ECDSA verify):")
    base = sw_rows[0][1]
    for name, ms in sw_rows:
        print(f"  {name:<40} {ms:8.3f} ms   x{ms / base:5.1f}")
    print(
        "Not measured on hardware: a real SPI TPM is far slower (published ECDSA signs "
        "take 100-600 ms), so seal/unseal run at start only and attestation on request."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
