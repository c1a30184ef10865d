"""TPM operation times on swtpm, beside a software ECDSA sign in the same run.

Starts a swtpm in a temporary directory and times each operation N times
through ``appliance.issuer.tpm.Tpm`` (the code the broker runs): create
primary, create+load an ECC key, sign with the device key, NV increment, NV
read, PCR extend, PCR read, and the key store's start-up. The baseline is one
ECDSA P-256 sign with ``cryptography`` in this process. Prints median and p90.

    .venv/bin/python bench/bench_tpm.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
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
from appliance.issuer.tpm import BOOT_NV_INDEX, Tpm  # noqa: E402
from appliance.issuer.tpm_keys import TpmKeyStore  # noqa: E402

NOTE = (
    "A real SPI TPM (e.g. Infineon SLB9670 on the Pi) takes roughly 100-600 ms per ECDSA\n"
    "sign, against the swtpm figure above. That is why the design keeps the TPM off the\n"
    "per-token path: the TPM signs one boot statement and one audit session key per start,\n"
    "and tokens are signed by the in-memory root key it vouches for."
)


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds per call for ``n`` calls (after one warm-up call)."""
    fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def p90(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(round(0.9 * (len(ys) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the smoke test")
    parser.add_argument("-n", type=int, default=None, help="runs per operation")
    args = parser.parse_args()
    n = args.n or (10 if args.quick else 200)
    if not swtpm.available():
        print("swtpm is not installed: no TPM figures (apt-get install swtpm); 0 operations timed")
        return 0
    logging.getLogger("appliance").setLevel(logging.ERROR)

    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sim = swtpm.Swtpm(Path(tmp) / "swtpm").start()
        tpm = Tpm(sim.tcti)
        try:
            # Baseline: software ECDSA P-256 / SHA-256 in this process.
            soft = ec.generate_private_key(ec.SECP256R1())
            rows.append(
                (
                    "software ECDSA sign (cryptography)",
                    timed(lambda: soft.sign(b"checkpoint", ec.ECDSA(hashes.SHA256())), n * 5),
                )
            )

            def create_primary() -> None:
                with tpm.use() as esapi:
                    esapi.flush_context(tpm.storage_primary(esapi))

            def create_load_key() -> None:
                from tpm2_pytss import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

                from appliance.issuer.tpm import DEVICE_KEY_ATTRS, DEVICE_KEY_TEMPLATE

                template = TPM2B_PUBLIC.parse(
                    DEVICE_KEY_TEMPLATE, objectAttributes=DEVICE_KEY_ATTRS
                )
                with tpm.use() as esapi:
                    primary = tpm.storage_primary(esapi)
                    try:
                        priv, pub, *_ = esapi.create(primary, TPM2B_SENSITIVE_CREATE(), template)
                        esapi.flush_context(esapi.load(primary, priv, pub))
                    finally:
                        esapi.flush_context(primary)

            keys_dir = Path(tmp) / "keys"
            rows.append(
                (
                    "key store start (check, key, boot++)",
                    timed(lambda: TpmKeyStore(tpm, keys_dir), max(3, n // 10)),
                )
            )
            rows.append(("create primary (ECC P-256)", timed(create_primary, max(3, n // 4))))
            rows.append(
                (
                    "create + load ECC P-256 key (incl. primary)",
                    timed(create_load_key, max(3, n // 4)),
                )
            )
            rows.append(("sign, device key (ECDSA P-256)", timed(lambda: tpm.sign(b"x" * 200), n)))
            rows.append(
                ("NV counter increment", timed(lambda: tpm.counter_increment(BOOT_NV_INDEX), n))
            )
            rows.append(("NV counter read", timed(lambda: tpm.counter_read(BOOT_NV_INDEX), n)))
            digest = hashlib.sha256(b"bench").digest()
            rows.append(
                ("PCR extend (SHA-256, PCR 16)", timed(lambda: tpm.pcr_extend(16, digest), n))
            )
            rows.append(("PCR read (SHA-256, 3 PCRs)", timed(lambda: tpm.pcr_read([0, 7, 16]), n)))
            leftover = tpm.loaded_handles()
        finally:
            tpm.close()
            sim.stop()

    base = statistics.median(rows[0][1])
    print(f"TPM operations on swtpm ({n} runs each; ms; ratio = median / software sign)")
    print(f"{'operation':46s} {'median':>9s} {'p90':>9s} {'ratio':>8s}")
    for name, xs in rows:
        med = statistics.median(xs)
        print(f"{name:46s} {med * 1e3:9.3f} {p90(xs) * 1e3:9.3f} {med / base:7.1f}x")
    sign_med = statistics.median(rows[4][1])
    print(f"device-key signs per second on swtpm: {1 / sign_med:.0f} (software: {1 / base:.0f})")
    print(f"transient objects / sessions left loaded afterwards: {leftover}")
    print(NOTE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
