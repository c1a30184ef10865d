"""Check a policy directory before the broker uses it.

    python -m appliance.policy check deploy/policies [--cases FILE]

Loads the policies exactly as the broker does (parse, annotations, schema),
lists the rules, and runs the directory's ``tests/cases.json`` (or FILE).
Exit status 0 when everything loads and every case passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.errors import PolicyUnavailable
from appliance.policy.cases import CASES_FILE, load_cases, run_cases
from appliance.policy.engine import PolicyEngine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.policy")
    sub = ap.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="load a policy directory and run its test cases")
    check.add_argument("directory", type=Path)
    check.add_argument("--cases", type=Path, default=None, help=f"default: DIR/{CASES_FILE}")
    args = ap.parse_args(argv)

    try:
        engine = PolicyEngine.load(args.directory)
    except PolicyUnavailable as e:
        print(f"policies do not load: {e.reason}", file=sys.stderr)
        return 1
    print(f"{len(engine.rules)} rules loaded from {args.directory}:")
    for rule in engine.rules:
        print(f"  {rule.effect:<6} {rule.id} ({rule.risk}, {rule.source})")

    cases_path = args.cases or args.directory / CASES_FILE
    if not cases_path.exists():
        print(f"no test cases at {cases_path}")
        return 0
    try:
        results = run_cases(engine, load_cases(cases_path))
    except PolicyUnavailable as e:
        print(f"cases could not run: {e.reason}", file=sys.stderr)
        return 1
    for r in results:
        print(r.describe())
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
