"""Cedar vs Rego for the appliance's default policy: decisions/s and p50/p99.

Both engines answer the same mix of requests (reads, writes, derived-content
writes, folder deletes, outside-share reads, copies out, pairing) with the
same default policy: Cedar from deploy/policies/, Rego from
bench/policy_default.rego compiled once into a bundle. A "decision" is the
full three-way answer (allow/approve/deny plus risk and reasons).

Variants, all measured in the same run:
  rego bundle          regopy: build() once, then set_input + query_bundle per decision
  cedar text           cedarpy.is_authorized twice per decision, policy and schema text
                       re-parsed on every call (the naive use)
  cedar 2x single      cedarpy.is_authorized twice per decision, pre-parsed PolicySet and
                       Schema handles
  cedar batch          cedarpy.is_authorized_batch, one call of two requests, pre-parsed
                       PolicySet and Schema handles
  PolicyEngine.decide  the product path: cedar batch plus reason/risk mapping and guards

Ratios are against "rego bundle". Before timing, every request is checked to
get the same decision and risk from both engines.

    .venv/bin/python bench/bench_policy.py           # full run (~15 s)
    .venv/bin/python bench/bench_policy.py --quick   # a few seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import cedarpy
import regopy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.policy import PolicyEngine, PolicyRequest  # noqa: E402

POLICY_DIR = ROOT / "deploy" / "policies"
REGO_FILE = Path(__file__).resolve().parent / "policy_default.rego"
REGO_QUERY = (
    'x = {"decision": data.appliance.decision, "risk": data.appliance.risk, '
    '"reasons": data.appliance.reasons}'
)

R = PolicyRequest
MIX: list[PolicyRequest] = [
    R("file.read", "alice", "docs", "notes/todo.txt", is_dir=False),
    R("file.list", "alice", "docs", "notes", is_dir=True),
    R("file.write", "alice", "docs", "notes/todo.txt", is_dir=False),
    R("file.write", "agent", "docs", "x.txt", derived_fields=("params.content",), is_dir=False),
    R("file.delete", "alice", "docs", "old", is_dir=True),
    R("file.read", "alice", None, "/etc/shadow"),
    R("file.copy", "alice", "docs", "a.txt", to_share=None, to_path="/tmp/a.txt", is_dir=False),
    R("file.move", "alice", "docs", "a.txt", to_share="photos", to_path="a.txt", is_dir=False),
    R("client.pair", "laptop", None, ""),
]


def rego_input(req: PolicyRequest) -> dict:
    d = asdict(req)
    d["derived_fields"] = list(req.derived_fields)
    return d


def timed(fn: Callable[[PolicyRequest], object], n: int) -> dict[str, float]:
    """Run ``fn`` n times over the mix; per-decision latencies in microseconds."""
    lat = []
    clock = time.perf_counter_ns
    for i in range(n):
        req = MIX[i % len(MIX)]
        t0 = clock()
        fn(req)
        lat.append(clock() - t0)
    lat.sort()
    total_s = sum(lat) / 1e9
    return {
        "per_s": n / total_s,
        "p50_us": lat[len(lat) // 2] / 1e3,
        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3,
        "mean_us": statistics.fmean(lat) / 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke test)")
    ap.add_argument("-n", type=int, default=None, help="decisions per variant")
    args = ap.parse_args()
    n = args.n or (300 if args.quick else 20_000)

    # -- load both engines, timed -----------------------------------------
    t0 = time.perf_counter()
    engine = PolicyEngine.load(POLICY_DIR)
    cedar_load_ms = (time.perf_counter() - t0) * 1e3

    t0 = time.perf_counter()
    builder = regopy.Interpreter()
    builder.add_module(REGO_FILE.name, REGO_FILE.read_text())
    bundle = builder.build(REGO_QUERY, ["appliance/decision"])
    if not bundle.ok():
        print("rego bundle did not build", file=sys.stderr)
        return 1
    rego = regopy.Interpreter()
    rego_load_ms = (time.perf_counter() - t0) * 1e3

    def rego_decide(req: PolicyRequest) -> dict:
        rego.set_input(rego_input(req))
        out = rego.query_bundle(bundle)
        return json.loads(out.binding("x").json())

    policy_text = "\n".join(p.read_text() for p in sorted(POLICY_DIR.glob("*.cedar")))
    schema_text = (POLICY_DIR / "schema.cedarschema").read_text()
    policy_set = engine._policies  # the pre-parsed handle the engine holds
    schema = engine._schema

    def cedar_text(req: PolicyRequest) -> tuple:
        requests, entities = PolicyEngine._cedar_requests(req)
        return tuple(
            cedarpy.is_authorized(r, policy_text, entities, schema=schema_text).decision
            for r in requests
        )

    def cedar_single(req: PolicyRequest) -> list:
        requests, entities = PolicyEngine._cedar_requests(req)
        return [cedarpy.is_authorized(r, policy_set, entities, schema=schema) for r in requests]

    def cedar_batch(req: PolicyRequest) -> list:
        requests, entities = PolicyEngine._cedar_requests(req)
        return cedarpy.is_authorized_batch(requests, policy_set, entities, schema=schema)

    # -- both engines must agree before any number means anything ----------
    for req in MIX:
        c = engine.decide(req)
        r = rego_decide(req)
        if (c.decision, c.risk) != (r["decision"], r["risk"]):
            print(f"MISMATCH {req}: cedar {c} rego {r}", file=sys.stderr)
            return 1
        # the text variant must reach the same two raw answers as the batch one
        assert cedar_text(req) == tuple(x.decision for x in cedar_batch(req))

    text_n = max(100, n // 10)
    # The text variant re-parses everything per call and is ~10x slower:
    # fewer iterations keep the run short without changing its per-decision figures.
    variants: list[tuple[str, Callable[[PolicyRequest], object], int]] = [
        ("rego bundle", rego_decide, n),
        ("cedar text", cedar_text, text_n),
        ("cedar 2x single", cedar_single, n),
        ("cedar batch", cedar_batch, n),
        ("PolicyEngine.decide", engine.decide, n),
    ]
    for _, fn, _ in variants:  # warm up caches and allocators
        timed(fn, min(200, n))
    results = {name: timed(fn, count) for name, fn, count in variants}

    base = results["rego bundle"]["per_s"]
    print(f"policy engines: {len(MIX)} request kinds, {n} decisions per variant (text: {text_n})")
    print(f"cedarpy {version('cedarpy')}, regopy {version('regopy')} (rego-cpp)")
    print(
        f"load: cedar (parse+validate) {cedar_load_ms:.1f} ms, rego (build bundle) "
        f"{rego_load_ms:.1f} ms"
    )
    print(f"{'variant':<22}{'decisions/s':>12}{'p50 us':>9}{'p99 us':>9}{'vs rego':>9}")
    for name, r in results.items():
        print(
            f"{name:<22}{r['per_s']:>12,.0f}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}"
            f"{r['per_s'] / base:>8.2f}x"
        )
    print("agreement: cedar and rego gave the same decision and risk for every request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
