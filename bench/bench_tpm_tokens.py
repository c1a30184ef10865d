"""Tokens with the TPM-certified root, beside the development key.

The TPM signs one boot statement per start; tokens are then minted and
verified with the in-memory root it vouches for. This measures both key
stores in the same run: token mints and verifications per second, and what
the TPM costs once per start (the statement) on swtpm.

    python bench/bench_tpm_tokens.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.config import Config  # noqa: E402
from appliance.db import Database  # noqa: E402
from appliance.issuer import swtpm  # noqa: E402
from appliance.issuer.choose import open_keystore  # noqa: E402
from appliance.issuer.statement import make_statement, verify_statement  # noqa: E402
from appliance.issuer.tokens import Claims, TokenService  # noqa: E402


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def run(kind: str, state: Path, n: int) -> dict[str, float]:
    opened = open_keystore(Config(state_dir=state, dev=True, keystore=kind))
    try:
        ks = opened.keystore
        tokens = TokenService(ks, Database(state / "state.db"))
        claims = [
            Claims(f"act_{i}", "file.read", f"share:docs/{i}", "ab" * 32, "cl_bench", None)
            for i in range(n)
        ]
        minted: list[str] = []
        mint_rate = rate(lambda i: minted.append(tokens.mint(claims[i])), n)
        verify_rate = rate(lambda i: tokens.verify_and_spend(minted[i], claims[i]), n)
        signer = ks.device_signer()
        root = tokens.root_public()
        times = []
        for _ in range(max(5, n // 50)):
            t = time.perf_counter()
            statement = make_statement(signer, root, epoch=1, boot_count=1, signer_label=ks.label)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        verify_statement(statement, signer.public_key_pem())
        check_ms = (time.perf_counter() - t) * 1000
        return {
            "mint": mint_rate,
            "verify": verify_rate,
            "statement_ms": statistics.median(times) * 1000,
            "check_ms": check_ms,
        }
    finally:
        opened.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    n = 300 if args.quick else 3000
    kinds = ["dev"] + (["tpm"] if swtpm.available() else [])
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            rows[kind] = run(kind, Path(tmp) / kind, n)
    print(f"{'key store':<28} {'mint/s':>8} {'verify+spend/s':>15} {'statement ms':>13}")
    names = {"dev": "development key (baseline)", "tpm": "TPM-certified root (swtpm)"}
    for kind, r in rows.items():
        print(
            f"{names[kind]:<28} {r['mint']:>8.0f} {r['verify']:>15.0f} {r['statement_ms']:>13.2f}"
        )
    if "tpm" in rows:
        d, t = rows["dev"], rows["tpm"]
        print(
            f"ratio TPM/dev: mint {t['mint'] / d['mint']:.2f}, "
            f"verify {t['verify'] / d['verify']:.2f}"
            " (the TPM is off the per-token path: only the statement touches it)"
        )
        print(
            f"the statement costs one device-key signature per start ({t['statement_ms']:.2f} ms "
            "on swtpm; 100-600 ms on an SPI TPM) and one verification per statement at the "
            f"executor ({t['check_ms']:.2f} ms, then cached)"
        )
    else:
        print("swtpm is not installed: TPM row skipped")


if __name__ == "__main__":
    main()
