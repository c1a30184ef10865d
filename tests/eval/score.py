"""Score a planner model on the eval set: exact verbs and targets.

    python tests/eval/score.py [--model models/NAME.toml | --socket PATH]
                               [--limit N] [--only ID ...] [--show] [--json] [--json-out FILE]

Each request of ``requests.json`` (a user's words plus the names in their
shares) goes through the planner, in this process with the manifest's backend
(``--model``, the default model when neither option is given), or through a
running agent's Unix socket (``--socket``; how the Hailo models are scored on
a real box). Each answer is compared with the expected plan:

* **score** per request: F1 over (verb, resource, key params) tuples, where
  the key params are ``to`` (move, copy), ``name`` (rename) and ``content``
  (write). Order counts (longest common subsequence) unless the request says
  ``"unordered": true``; even then a step that uses a folder before the plan
  makes it does not count as matched.
* **exact**: score 1.0 and a valid plan.
* **valid**: the planner returned a plan that validates as
  :class:`appliance.intents.Plan` (a model failure counts as not valid).
* **escapes**: resources that leave the listed shares, are not plain paths,
  or name an existing thing the listing does not have (new names are allowed
  only inside a listed folder or one the plan makes). Must be 0: the planner
  constrains names to the listing, this checks that it does.

The pure parts (:func:`score_plan`, :func:`escapes`, :func:`summarize`) need
nothing but the intent models, so the tests can call them without a model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

# The code of this checkout, not whichever one the virtualenv was installed from.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.broker.scope import SHARE_NAME, check_name
from appliance.config import Limits
from appliance.errors import ApplianceError, ScopeError
from appliance.intents import Plan

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REQUESTS = HERE / "requests.json"  # the tuning part: prompt work looks at these
HELDOUT = HERE / "heldout.json"  # the held-out part: prompt work never looks at these
NO_PLAN = ("question", "refusal")
# Parameters that say *what* an intent does; the others (mkdir's parents,
# read's max_bytes/offset) are details a right plan may or may not spell out.
KEY_PARAMS = ("to", "name", "content")
# Verbs that act on something that must already exist.
NEEDS_EXISTING = frozenset(
    {"file.list", "file.stat", "file.read", "file.copy", "file.move", "file.rename", "file.delete"}
)

Key = tuple[str, str, tuple[tuple[str, str], ...]]


# ---------------------------------------------------------------- the data set
def load_requests(path: Path = REQUESTS) -> list[dict[str, Any]]:
    """The requests of an eval file (see README.md for the format)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data["requests"]


def load_parts(part: str = "all") -> list[dict[str, Any]]:
    """The requests of the tuning part, the held-out part or both, each marked
    with its ``part``."""
    out: list[dict[str, Any]] = []
    for name, path in (("tuning", REQUESTS), ("heldout", HELDOUT)):
        if part in (name, "all"):
            out += [{**r, "part": name} for r in load_requests(path)]
    return out


# ---------------------------------------------------------------- scoring
def _norm_resource(value: Any) -> str:
    """``share:docs/`` and ``share:docs`` are one place; nothing else is
    rewritten (a wrong spelling stays wrong)."""
    text = str(value)
    return text.rstrip("/") if text.startswith("share:") else text


def intent_key(intent: Any) -> Key:
    """What is compared of an intent: verb, resource and the key params."""
    if not isinstance(intent, dict):
        return ("?", repr(intent), ())
    params = intent.get("params") or {}
    if not isinstance(params, dict):
        params = {}
    key_params = []
    for name in KEY_PARAMS:
        if name in params:
            value = params[name]
            if name == "to":
                value = _norm_resource(value)
            elif isinstance(value, str):
                value = value.strip()  # a trailing newline in written text is no error
            key_params.append((name, str(value)))
    return (str(intent.get("verb")), _norm_resource(intent.get("resource")), tuple(key_params))


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def order_violations(got: list[dict[str, Any]]) -> set[int]:
    """Indexes of intents that use a folder (as resource or ``to``) before the
    plan's own ``file.mkdir`` of it: run in that order, they would fail."""
    made_at: dict[str, int] = {}
    for i, intent in enumerate(got):
        if isinstance(intent, dict) and intent.get("verb") == "file.mkdir":
            made_at.setdefault(_norm_resource(intent.get("resource")), i)
    bad: set[int] = set()
    for i, intent in enumerate(got):
        if not isinstance(intent, dict):
            continue
        params = intent.get("params") if isinstance(intent.get("params"), dict) else {}
        used = [_norm_resource(intent.get("resource")), _norm_resource(params.get("to", ""))]
        for folder, j in made_at.items():
            if j > i and any(_inside(u, folder) for u in used):
                bad.add(i)
    return bad


def _lcs(a: list[Key], b: list[Key]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def score_plan(expected: list[dict[str, Any]], got: list[dict[str, Any]], unordered: bool) -> float:
    """F1 of ``got`` against ``expected`` over (verb, resource, key params).

    Ordered: matches are the longest common subsequence, so a right step in
    the wrong place counts once. Unordered: matches are the multiset
    intersection, without the steps that use a folder before it is made.
    Two empty plans agree (1.0); one empty plan scores 0.0.
    """
    if not expected and not got:
        return 1.0
    if not expected or not got:
        return 0.0
    exp = [intent_key(i) for i in expected]
    if unordered:
        bad = order_violations(got)
        usable = [intent_key(g) for k, g in enumerate(got) if k not in bad]
        matched = sum((Counter(exp) & Counter(usable)).values())
    else:
        matched = _lcs(exp, [intent_key(g) for g in got])
    if matched == 0:
        return 0.0
    precision = matched / len(got)
    recall = matched / len(exp)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------- checks
def is_valid(got: Any) -> bool:
    """Does ``got`` validate as a plan of intents?"""
    try:
        Plan.model_validate({"intents": got})
    except ValidationError:
        return False
    return True


def _parse(resource: Any, listing: dict[str, list[str]]) -> tuple[str, str] | str:
    """(share, relative path) of a plain resource inside a listed share, or
    the reason it is not one."""
    if not isinstance(resource, str) or not resource.startswith("share:"):
        return f"{resource!r} is not a share:NAME/path resource"
    share, _, rel = resource[len("share:") :].partition("/")
    if not SHARE_NAME.fullmatch(share) or share not in listing:
        return f"{resource!r} is outside the listed shares"
    if rel:
        try:
            for part in rel.split("/"):
                check_name(part, Limits())
        except ScopeError as e:
            return f"{resource!r} is not a plain path: {e.reason}"
    return share, rel


def escapes(intents: Iterable[Any], listing: dict[str, list[str]]) -> list[str]:
    """Why each resource of the plan that leaves the listing does so.

    Walks the plan in order over the listed names: what a verb acts on must be
    listed or made earlier in the plan; a new name (mkdir, move/copy target,
    rename, a new file written) must be a plain name inside a listed folder or
    one the plan made. Empty: the plan stays inside the listing.
    """
    dirs: set[tuple[str, str]] = set()
    files: set[tuple[str, str]] = set()
    for share, entries in listing.items():
        dirs.add((share, ""))
        for entry in entries:
            if entry.endswith("/"):
                dirs.add((share, entry.rstrip("/")))
            else:
                files.add((share, entry))

    def parent(place: tuple[str, str]) -> tuple[str, str]:
        return place[0], place[1].rpartition("/")[0]

    out: list[str] = []
    for intent in intents:
        if not isinstance(intent, dict):
            out.append(f"{intent!r} is not an intent")
            continue
        verb = intent.get("verb")
        params = intent.get("params") if isinstance(intent.get("params"), dict) else {}
        place = _parse(intent.get("resource"), listing)
        if isinstance(place, str):
            out.append(place)
            continue
        exists = place in dirs or place in files
        shown = f"share:{place[0]}/{place[1]}"
        if verb in ("file.move", "file.copy", "file.rename", "file.delete") and not place[1]:
            out.append(f"{verb} acts on the share root {shown!r}")
            continue
        if verb in NEEDS_EXISTING and not exists:
            out.append(f"{verb} names {shown!r}, which is not in the listing")
            continue
        if verb == "file.list" and place not in dirs:
            out.append(f"file.list names {shown!r}, which is not a listed folder")
            continue
        if verb in ("file.mkdir", "file.write") and not exists and parent(place) not in dirs:
            out.append(f"{verb} makes {shown!r} in a folder that is not listed")
            continue
        if verb == "file.mkdir":
            dirs.add(place)
        elif verb == "file.write":
            files.add(place)
        elif verb in ("file.move", "file.copy"):
            target = _parse(params.get("to"), listing)
            if isinstance(target, str):
                out.append(target)
                continue
            if not target[1] or parent(target) not in dirs:
                out.append(f"{verb} sends {shown!r} into a folder that is not listed")
                continue
            (dirs if place in dirs else files).add(target)
        elif verb == "file.rename":
            name = params.get("name")
            try:
                if not isinstance(name, str):
                    raise ScopeError("the new name is not a string")
                check_name(name, Limits())
            except ScopeError as e:
                out.append(f"file.rename of {shown!r} to {name!r}: {e.reason}")
                continue
            renamed = (place[0], f"{parent(place)[1]}/{name}".lstrip("/"))
            (dirs if place in dirs else files).add(renamed)
    return out


# ---------------------------------------------------------------- running
PlanFn = Callable[[str, dict[str, list[str]]], dict[str, Any]]


def score_request(request: dict[str, Any], plan_fn: PlanFn) -> dict[str, Any]:
    """Plan one request and score the answer. A refusal of the planner (an
    ApplianceError: invalid output, a model failure) is a result, not a crash.

    A request that expects no plan (``expect``: question or refusal) is right
    when the answer is a question or a refusal; a request that expects a plan
    scores 0 for either."""
    start = time.perf_counter()
    error = None
    answer: dict[str, Any] = {}
    try:
        answer = plan_fn(request["text"], request["listing"])
    except ApplianceError as e:
        if e.code == "agent_unavailable":
            raise  # no agent at all: the run is void, not the model's fault
        error = f"{e.code}: {e.reason}"
    wall = time.perf_counter() - start
    kind = str(answer.get("kind", "plan")) if error is None else "failed"
    got = answer.get("intents") if error is None and kind == "plan" else []
    if not isinstance(got, list):
        got = []
    expect = request.get("expect", "plan")
    if kind in NO_PLAN:
        valid = bool(str(answer.get("explanation", "")).strip())
        score = 1.0 if expect in NO_PLAN else 0.0
    else:
        valid = error is None and is_valid(got)
        score = (
            0.0
            if expect in NO_PLAN
            else score_plan(request["expected"], got, bool(request.get("unordered")))
        )
    return {
        "id": request["id"],
        "part": request.get("part", "tuning"),
        "tags": list(request.get("tags", [])),
        "expect": expect,
        "kind": kind,
        "score": round(score, 4),
        "exact": valid and score == 1.0,
        "valid": valid,
        "escapes": escapes(got, request["listing"]),
        "error": error,
        "seconds": round(wall, 3),
        "model_seconds": answer.get("seconds"),
        "tokens": answer.get("tokens"),
        "repaired": answer.get("repaired"),
        "confidence": answer.get("confidence"),
        "explanation": answer.get("explanation"),
        "compact": answer.get("compact"),
        "expected": request["expected"],
        "got": got,
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall figures of a run: exact-match rate, mean F1, validity rate,
    escape rate (share of requests whose plan left the listing, must be 0),
    time per request, and mean F1 per tag."""
    n = len(results)
    if n == 0:
        return {"requests": 0}
    seconds = [r["seconds"] for r in results]
    tokens = [r["tokens"] for r in results if isinstance(r.get("tokens"), int)]
    model_seconds = [
        r["model_seconds"] for r in results if isinstance(r.get("model_seconds"), int | float)
    ]
    tags: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        for tag in r.get("tags", []):
            tags.setdefault(tag, []).append(r)
    return {
        "requests": n,
        "exact_match_rate": round(sum(bool(r["exact"]) for r in results) / n, 4),
        "mean_f1": round(sum(r["score"] for r in results) / n, 4),
        "validity_rate": round(sum(bool(r["valid"]) for r in results) / n, 4),
        "escape_rate": round(sum(bool(r["escapes"]) for r in results) / n, 4),
        "escaped_resources": sum(len(r["escapes"]) for r in results),
        "failures": sum(r.get("error") is not None for r in results),
        "seconds_mean": round(statistics.fmean(seconds), 3),
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_max": round(max(seconds), 3),
        "seconds_total": round(sum(seconds), 3),
        "tokens_mean": round(statistics.fmean(tokens), 1) if tokens else None,
        "tokens_median": statistics.median(tokens) if tokens else None,
        "tokens_max": max(tokens) if tokens else None,
        "time_to_plan_median": round(statistics.median(model_seconds), 3)
        if model_seconds
        else None,
        "by_tag": {
            tag: {
                "requests": len(rs),
                "mean_f1": round(sum(r["score"] for r in rs) / len(rs), 4),
                "exact": sum(bool(r["exact"]) for r in rs),
            }
            for tag, rs in sorted(tags.items())
        },
    }


def in_process(
    manifest_path: Path, *, warm: bool = True, confidence_floor: float | None = None
) -> tuple[PlanFn, dict[str, Any], Callable[[], None]]:
    """A planner in this process on the manifest's backend (sha256 checked
    before the model loads), warmed like the agent warms at start, so the
    first request is timed like every other one."""
    from appliance.agent.backends import make_backend
    from appliance.agent.models import load_manifest
    from appliance.agent.planner import Planner

    manifest = load_manifest(manifest_path)
    backend = make_backend(manifest)
    planner = Planner(backend)
    if confidence_floor is not None:
        planner.confidence_floor = confidence_floor
    warm_s = None
    if warm:
        start = time.perf_counter()
        # As the agent does: a failed warm-up only costs the first request time.
        with contextlib.suppress(ApplianceError):
            planner.warm()
        warm_s = round(time.perf_counter() - start, 3)

    def plan(text: str, listing: dict[str, list[str]]) -> dict[str, Any]:
        return planner.plan(text, listing).to_dict()

    model = {
        "model_id": backend.model_id,
        "model_sha256": backend.model_sha256,
        "backend": manifest.backend,
        "via": f"in-process ({manifest_path})",
        "warm_up_seconds": warm_s,
        "confidence_floor": planner.confidence_floor,
    }
    return plan, model, backend.close


def via_socket(socket_path: Path, timeout_s: float) -> tuple[PlanFn, dict[str, Any]]:
    """A running agent, reached over its Unix socket the way the broker does."""
    from appliance.agent.client import AgentClient

    client = AgentClient(socket_path, timeout_s=timeout_s)
    health = client.health()
    model = {
        "model_id": health.get("model_id"),
        "model_sha256": health.get("model_sha256"),
        "backend": health.get("backend"),
        "via": f"socket {socket_path}",
    }
    return client.plan, model


# ---------------------------------------------------------------- output
def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _brief(intent: Any) -> str:
    verb, resource, params = intent_key(intent)
    extra = " ".join(f"{k}={v}" for k, v in params)
    return f"{verb} {resource}" + (f" {extra}" if extra else "")


HEADER = (
    f"{'request':<28} {'F1':>5} {'exact':>5} {'valid':>5} {'esc':>3} {'s':>6} {'tok':>4} "
    f"{'conf':>5}  note"
)


def format_row(r: dict[str, Any], show: bool) -> str:
    """One request's line of the table (and, with ``show``, its misses)."""
    note = r["error"] or (r["escapes"][0] if r["escapes"] else "")
    if not note and r.get("kind") in NO_PLAN:
        note = f"{r['kind']}: {r.get('explanation') or ''}"
    if not note and not r["exact"]:
        note = _brief(r["got"][0]) if r["got"] else "(empty plan)"
    tokens = r["tokens"] if r["tokens"] is not None else "-"
    conf = r.get("confidence")
    conf_s = f"{conf:.2f}" if isinstance(conf, float | int) else "-"
    lines = [
        f"{_cut(r['id'], 28):<28} {r['score']:>5.2f} {'yes' if r['exact'] else 'no':>5} "
        f"{'yes' if r['valid'] else 'no':>5} {len(r['escapes']):>3} {r['seconds']:>6.2f} "
        f"{tokens:>4} {conf_s:>5}  {_cut(note, 70)}"
    ]
    if show and not r["exact"]:
        if r.get("expect", "plan") != "plan":
            lines.append(f"{'':<30}want a {r['expect']}")
        lines += [f"{'':<30}want {_brief(i)}" for i in r["expected"]]
        lines += [f"{'':<30}said {line}" for line in (r.get("compact") or "").splitlines()]
        lines += [f"{'':<30}got  {_brief(i)}" for i in r["got"]]
    return "\n".join(lines)


def format_summary(s: dict[str, Any]) -> str:
    """The overall figures, one per line."""
    lines = [
        f"requests          {s['requests']}",
        f"exact match rate  {s['exact_match_rate']:.3f}",
        f"mean F1           {s['mean_f1']:.3f}",
        f"validity rate     {s['validity_rate']:.3f}  ({s['failures']} model failures)",
        f"escape rate       {s['escape_rate']:.3f}  ({s['escaped_resources']} resources)",
        f"seconds/request   mean {s['seconds_mean']:.2f}  median {s['seconds_median']:.2f}  "
        f"max {s['seconds_max']:.2f}  total {s['seconds_total']:.1f}",
    ]
    if s.get("time_to_plan_median") is not None:
        lines.append(f"time to plan      median {s['time_to_plan_median']:.2f} s (in the model)")
    if s["tokens_mean"] is not None:
        lines.append(
            f"tokens/request    mean {s['tokens_mean']:.1f}  median {s['tokens_median']}  "
            f"max {s['tokens_max']}"
        )
    by_tag = "  ".join(f"{t} {v['mean_f1']:.2f}" for t, v in s["by_tag"].items())
    lines.append(f"mean F1 by tag    {by_tag}")
    return "\n".join(lines)


def print_table(results: list[dict[str, Any]], summary: dict[str, Any], show: bool) -> None:
    """The whole table and the summary (what a finished run prints)."""
    print(HEADER)
    for r in results:
        print(format_row(r, show))
    print()
    print(format_summary(summary))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a model manifest (default: the default model)")
    source.add_argument("--socket", type=Path, help="a running agent's Unix socket")
    p.add_argument(
        "--part",
        choices=("all", "tuning", "heldout"),
        default="all",
        help="which part of the eval (default: both, scored separately)",
    )
    p.add_argument("--requests", type=Path, help="another eval file instead of the parts")
    p.add_argument("--limit", type=int, default=None, help="score only the first N requests")
    p.add_argument("--only", action="append", default=[], help="score only this request id")
    p.add_argument("--no-warm", action="store_true", help="time the first request cold")
    p.add_argument(
        "--confidence-floor",
        type=float,
        help="in process: propose plans down to this confidence (default: the planner's own; "
        "0 proposes every plan, to measure where the floor belongs)",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds per request (--socket)")
    p.add_argument("--show", action="store_true", help="print wanted and got plans of misses")
    p.add_argument("--json", action="store_true", help="print machine-readable results only")
    p.add_argument("--json-out", type=Path, help="also write machine-readable results here")
    args = p.parse_args(argv)

    requests = load_requests(args.requests) if args.requests else load_parts(args.part)
    if args.only:
        unknown = set(args.only) - {r["id"] for r in requests}
        if unknown:
            p.error(f"no request with id {', '.join(sorted(unknown))}")
        requests = [r for r in requests if r["id"] in args.only]
    if args.limit is not None:
        requests = requests[: max(0, args.limit)]

    close: Callable[[], None] = lambda: None  # noqa: E731
    try:
        if args.socket:
            plan_fn, model = via_socket(args.socket, args.timeout)
        else:
            from appliance.agent.models import default_manifest_path

            manifest = args.model or default_manifest_path()
            if not manifest.exists() and (REPO / manifest).exists():
                manifest = REPO / manifest  # models/NAME.toml from anywhere
            plan_fn, model, close = in_process(
                manifest, warm=not args.no_warm, confidence_floor=args.confidence_floor
            )
        if not args.json:
            print(f"model {model['model_id']} (sha256 {model['model_sha256']}) via {model['via']}")
            if model.get("warm_up_seconds") is not None:
                print(f"warm-up (fixed prompts evaluated once) {model['warm_up_seconds']:.2f} s")
            print()
            print(HEADER, flush=True)
        results = []
        try:
            for request in requests:
                results.append(score_request(request, plan_fn))
                if not args.json:
                    # A row as soon as it is known: a full run takes minutes.
                    print(format_row(results[-1], args.show), flush=True)
        finally:
            close()
    except ApplianceError as e:
        print(f"score.py: {e.reason}", file=sys.stderr)
        return 2
    summary = summarize(results)
    parts = {
        name: summarize([r for r in results if r["part"] == name])
        for name in ("tuning", "heldout")
        if any(r["part"] == name for r in results)
    }
    report = {"model": model, "summary": summary, "parts": parts, "results": results}
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for name, part in parts.items():
            if len(parts) > 1:
                print(f"\n{name} part")
            print()
            print(format_summary(part))
        if len(parts) > 1:
            print("\nboth parts")
            print()
            print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
