"""The model agent: time-to-plan and tokens/s through the whole agent path
(client -> Unix socket -> server -> planner -> llama.cpp with the compact
plan grammar, token log-probabilities and the repeated-step stop) beside raw
llama.cpp generating the same number of tokens from the same prompt and the
same prompt state in the same run (the ratio is the agent's overhead:
grammar, rendering, validation, expansion, the socket), the tokens a plan
costs (and what that means at the Hailo-10H's published 6-8 tokens/s), and
the effect of the prompt cache (the first request evaluates the fixed system
prompt and examples; later ones start from their saved state), and, in a full
run, time-to-plan beside a process that keeps one core busy (every core
always, half always, and the thread governor as shipped).

    .venv/bin/python bench/bench_agent.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.agent import templates  # noqa: E402
from appliance.agent.backends import LlamaCppBackend  # noqa: E402
from appliance.agent.client import AgentClient  # noqa: E402
from appliance.agent.models import default_manifest_path, load_manifest  # noqa: E402
from appliance.agent.planner import Planner, listing_names  # noqa: E402
from appliance.agent.prompt import PLAN_SYSTEM, ask_turn  # noqa: E402
from appliance.agent.server import AgentServer  # noqa: E402
from appliance.agent.threads import ThreadGovernor  # noqa: E402

LISTING = {
    "docs": [
        "Inbox/",
        "Inbox/2021-invoice.pdf",
        "Inbox/2022-receipt.pdf",
        "Inbox/2023-letter.pdf",
        "Inbox/scan-0001.pdf",
        "notes.txt",
        "Photos/",
        "Archive/",
    ]
}
REQUESTS = [
    "Sort the PDFs in my Inbox into folders by year inside Archive",
    "delete notes.txt",
    "make a folder called Receipts",
    "list the Inbox",
    "move notes.txt into Photos and copy 2021-invoice.pdf into Archive",
]
HAILO_TOKENS_PER_S = (6.0, 8.0)  # published for 1.5B models on the AI HAT+ 2


def messages_for(planner: Planner, text: str) -> list[dict[str, str]]:
    """Exactly the messages the planner sends for ``text`` over LISTING."""
    budget = planner._char_budget(PLAN_SYSTEM, planner.plan_max_tokens)
    user = ask_turn(listing_names(LISTING, budget).shown, " ".join(text.split()))
    return templates.chat(PLAN_SYSTEM, user, planner.examples)


def rewind(backend: LlamaCppBackend, messages: list[dict[str, str]]) -> None:
    """Put the context back to exactly the evaluated fixed prompt (system +
    examples), so each measured request evaluates its own words and names
    and generates, whatever ran before it."""
    head = backend.tokens(
        templates.segments(backend.manifest, messages[:-1], add_generation_prompt=False)
    )
    backend._llm.load_state(backend._states[tuple(head)])


def raw_generation(
    backend: LlamaCppBackend, messages: list[dict[str, str]], n_tokens: int
) -> tuple[float, int]:
    """llama.cpp alone: the same rendered prompt from the same cached prefix
    state, greedy decoding by llama.cpp's own sampler chain, ``n_tokens``
    generated (it does not stop at an end token); no grammar, no Python per
    token beyond the loop, no socket, no validation."""
    llm = backend._llm  # the same loaded model
    prompt = backend.tokens(templates.segments(backend.manifest, messages))
    rewind(backend, messages)
    backend._use_threads(backend.governor.threads())  # what the agent would use now
    start = time.perf_counter()
    count = 0
    for _ in llm.generate(prompt, temp=0.0, repeat_penalty=1.0):
        count += 1
        if count >= n_tokens:
            break
    return time.perf_counter() - start, count


class HalfGeneration(ThreadGovernor):
    """As before the thread governor: the request's words evaluated on every
    core, the plan generated on half (from its second token on; the first
    is on every core, which favours this baseline a little)."""

    def token(self, threads: int, seconds: float) -> int:
        return self.half


def on_half(
    backend: LlamaCppBackend, client: AgentClient, messages: list[dict[str, str]], text: str
) -> float:
    """Time-to-plan of the same request generated on half the cores (as
    before the thread governor), from the same prefix state."""
    shipped = backend.governor
    backend.governor = HalfGeneration(shipped.full, shipped.half)
    try:
        rewind(backend, messages)
        t = time.perf_counter()
        client.plan(text, LISTING)
        return time.perf_counter() - t
    finally:
        backend.governor = shipped


def busy(backend: LlamaCppBackend, client: AgentClient, rounds: int = 2) -> None:
    """Time-to-plan beside one process that keeps a core busy: on every core
    always, on half always, and as shipped (the backend's own governor, which
    has seen the idle requests before: every core until generation is seen
    to be contended, then half for a while). The three take turns, request
    by request, so a change in the machine's speed falls on all three."""
    shipped = backend.governor
    full, half = shipped.full, shipped.half
    if half == full:
        print("one core: nothing to govern")
        return
    ways = {
        f"always {full} threads": ThreadGovernor(full, full),
        f"always {half} thread{'s' if half > 1 else ''}": ThreadGovernor(half, half),
        "as shipped (governed)": shipped,
    }
    times: dict[str, list[float]] = {label: [] for label in ways}
    before = shipped.contended
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(rounds):
            for text in REQUESTS:
                for label, governor in ways.items():
                    backend.governor = governor
                    t = time.perf_counter()
                    client.plan(text, LISTING)
                    times[label].append(time.perf_counter() - t)
    finally:
        hog.kill()
        hog.wait()
        backend.governor = shipped
    print(f"beside one busy process (median of {rounds * len(REQUESTS)} requests each):")
    for label, ts in times.items():
        print(f"  {label:24} {statistics.median(ts):6.2f} s")
    print(f"  the governor moved to half the cores {shipped.contended - before} times")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds = 1 if args.quick else 3

    t0 = time.perf_counter()
    backend = LlamaCppBackend(load_manifest(default_manifest_path()))
    load_s = time.perf_counter() - t0
    planner = Planner(backend)
    folder = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    server = AgentServer(folder / "agent.sock", planner, broker_uid=None)
    server.serve_in_thread()
    client = AgentClient(server.socket_path, timeout_s=900)  # a loaded machine is slow

    print(f"model {backend.model_id}: verify (sha256) + load {load_s:.2f} s")
    print(f"threads: {backend.governor.full}, {backend.governor.half} while contended")
    # Cold: the first request evaluates the fixed prompt (system + examples).
    t = time.perf_counter()
    cold = client.plan(REQUESTS[0], LISTING)
    cold_s = time.perf_counter() - t
    print(
        f"first request (cache empty):  time-to-plan {cold_s:.2f} s, "
        f"{cold['tokens']} tokens, cached_prefix={cold['cached_prefix']}"
    )

    requests = REQUESTS if not args.quick else REQUESTS[:1]
    agent_s: list[float] = []
    half_s: list[float] = []  # the same request, generated on half the cores
    raw_s: list[float] = []
    rows = []
    for _ in range(rounds):
        for text in requests:
            messages = messages_for(planner, text)
            rewind(backend, messages)
            t = time.perf_counter()
            r = client.plan(text, LISTING)
            elapsed = time.perf_counter() - t
            raw_t, raw_n = raw_generation(backend, messages, r["tokens"])
            half_s.append(on_half(backend, client, messages, text))
            agent_s.append(elapsed)
            raw_s.append(raw_t)
            rows.append((text, elapsed, r["tokens"], r["cached_prefix"], raw_t, raw_n))
    print()
    print(f"{'request':46} {'agent s':>8} {'tokens':>6} {'tok/s':>6} {'raw s':>7} {'raw tok/s':>9}")
    for text, elapsed, n, _, raw_t, raw_n in rows:
        print(
            f"{text[:46]:46} {elapsed:8.3f} {n:6d} {n / elapsed:6.1f} {raw_t:7.3f} "
            f"{raw_n / raw_t:9.1f}"
        )
    warm = statistics.median(agent_s)
    raw = statistics.median(raw_s)
    tokens = statistics.median(n for _, _, n, _, _, _ in rows)
    slow, fast = (tokens / r for r in HAILO_TOKENS_PER_S)
    print()
    print(
        f"generated tokens per plan (median): {tokens:g}; at the Hailo-10H's published "
        f"{HAILO_TOKENS_PER_S[0]:g}-{HAILO_TOKENS_PER_S[1]:g} tokens/s: {fast:.1f}-{slow:.1f} s"
    )
    print(f"time-to-plan, later requests (median): {warm:.3f} s")
    print(f"raw llama.cpp, same tokens, same prefix state (median): {raw:.3f} s")
    print(f"agent overhead ratio (agent / raw): {warm / raw:.2f}")
    print(f"generation found contended (moved to half the cores): {backend.governor.contended}")
    half = statistics.median(half_s)
    print(
        f"time-to-plan generating on half the cores as before, same run (median): {half:.3f} s; "
        f"governed / half: {warm / half:.2f}"
    )
    print(
        f"prompt cache: first request {cold_s:.2f} s vs later {warm:.3f} s (x{cold_s / warm:.1f})"
    )

    if not args.quick:
        backend.prefix_cache = False
        t = time.perf_counter()
        client.plan(REQUESTS[0], LISTING)
        nocache_s = time.perf_counter() - t
        backend.prefix_cache = True
        print(f"same request with the prefix cache off: {nocache_s:.2f} s")
        busy(backend, client)
    server.close()
    backend.close()


if __name__ == "__main__":
    main()
