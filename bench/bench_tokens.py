"""Capability-token throughput against raw Ed25519 in the same run.

Prints mints/s, verify_and_spend/s (temporary SQLite db, synchronous=FULL),
verify-only/s (every check but the spend write) and, as the baseline, raw
Ed25519 signature verifications/s with `cryptography` on a message of the
token's size. Then a breakdown of one verification: Biscuit parse alone,
parse + signature, and the Datalog part (authorizer build, query, run).

    .venv/bin/python bench/bench_tokens.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import biscuit_auth as biscuit  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from appliance.db import Database  # noqa: E402
from appliance.issuer.keys import DevKeyStore  # noqa: E402
from appliance.issuer.tokens import Claims, TokenService  # noqa: E402

CLAIMS = Claims(
    action_id="act-00000001",
    verb="file.move",
    resource="share:docs/Inbox/invoice-2024-03.pdf",
    intent_digest="ab" * 32,
    requester="client-7",
    approval_id="appr-42",
)


def rate(fn: Callable[[], object], seconds: float, rounds: int = 3) -> float:
    """Operations per second: the best of `rounds` timed runs of about `seconds` each."""
    fn()  # warm up
    best = 0.0
    for _ in range(rounds):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(16):
                fn()
            n += 16
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def spend_rate(svc: TokenService, seconds: float) -> float:
    """verify_and_spend/s: each call needs a fresh token, minted outside the timing."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        token = svc.mint(CLAIMS)
        start = time.perf_counter()
        svc.verify_and_spend(token, CLAIMS)
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the smoke test")
    args = parser.parse_args()
    seconds = 0.1 if args.quick else 1.5

    with tempfile.TemporaryDirectory() as tmp:
        import logging

        logging.getLogger("appliance.keys").setLevel(logging.ERROR)
        keys = DevKeyStore(Path(tmp) / "keys")
        db = Database(Path(tmp) / "state.db")
        svc = TokenService(keys, db)
        token = svc.mint(CLAIMS)
        raw_len = len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        public = keys.token_root().public_key

        # Baseline: one Ed25519 verification of a message as long as the token.
        priv = Ed25519PrivateKey.generate()
        message = b"\x5a" * raw_len
        signature = priv.sign(message)
        pub = priv.public_key()
        raw = rate(lambda: pub.verify(signature, message), seconds)

        mint = rate(lambda: svc.mint(CLAIMS), seconds)
        verify_only = rate(lambda: svc._verify(token, CLAIMS), seconds)
        parse_only = rate(lambda: biscuit.UnverifiedBiscuit.from_base64(token), seconds)
        parse_sig = rate(lambda: biscuit.Biscuit.from_base64(token, public), seconds)
        spend = spend_rate(svc, seconds * 2)
        db.close()

    us = lambda r: 1e6 / r  # noqa: E731
    ratio = verify_only / raw
    print(f"token size: {len(token)} chars base64, {raw_len} bytes")
    print(f"raw Ed25519 verify (cryptography): {raw:10.0f}/s  {us(raw):7.1f} us  [baseline]")
    print(f"mint:                              {mint:10.0f}/s  {us(mint):7.1f} us")
    print(f"verify-only (no spend write):      {verify_only:10.0f}/s  {us(verify_only):7.1f} us")
    print(f"verify_and_spend (SQLite, FULL):   {spend:10.0f}/s  {us(spend):7.1f} us  (median)")
    print("breakdown of one verify-only:")
    sig_us = us(parse_sig) - us(parse_only)
    datalog_us = us(verify_only) - us(parse_sig)
    print(f"  parse (no signature check):      {us(parse_only):7.1f} us")
    print(f"  signature checks (Biscuit):      {sig_us:7.1f} us")
    print(f"  authorizer (build, query, run):  {datalog_us:7.1f} us")
    share = sig_us / us(verify_only)
    print(f"  signature share of verify-only:  {share:7.0%}")
    print(f"ratio verify-only/raw Ed25519: {ratio:.2f} (target >= 0.50)")
    print(f"ratio verify_and_spend/raw Ed25519: {spend / raw:.2f}")
    if ratio >= 0.5:
        print("target met: token verification runs at least half the raw signature rate")
    else:
        print(
            "target NOT met: the Datalog authorizer costs more than one raw signature check "
            "(see the breakdown)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
