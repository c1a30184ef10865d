"""An allowed read through the whole stack, against a bare FastAPI endpoint.

Each server runs in its own process (uvicorn on loopback); clients are
threads with keep-alive connections. The broker's path is authentication,
rate limit, validation, scope resolution, policy, token mint, token verify
and spend, the read itself, and a durable (fsync'd, group-committed) audit
append. Printed: requests/s and p50/p99 at 1 and 32 concurrent clients for
both, the ratio, and the broker's overhead per action (p50 difference).

    python bench/bench_stack.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def serve(kind: str, port: int, state: Path) -> None:
    import uvicorn
    from fastapi import FastAPI

    if kind == "bare":
        app = FastAPI()

        @app.post("/v1/intents")
        def echo(body: dict) -> dict:
            return {"status": "done", "intents": body.get("intents", [])}

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")
        return
    from appliance.api.app import create_app
    from appliance.box import open_box
    from appliance.broker.grants import Grant
    from appliance.config import Config, Limits

    share = state / "share"
    share.mkdir(parents=True, exist_ok=True)
    (share / "hello.txt").write_text("hello from the share\n")
    config = Config(
        state_dir=state,
        shares={"docs": share},
        dev=True,
        limits=Limits(requests_per_second=1e6, burst=1_000_000),
    )
    broker = open_box(config)
    secret, ref = broker.clients.new_pairing("bench", "bench", Grant(write=frozenset({"docs"})))
    broker.clients.set_pairing_status(ref, "approved")
    (state / "credential").write_text(broker.clients.deliver(secret)["credential"])
    uvicorn.run(create_app(broker), host="127.0.0.1", port=port, log_level="error")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, state: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port), "--state", str(state)],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(url + "/docs", timeout=0.5)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{kind} server did not start")


def load(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    body = {"intents": [{"verb": "file.read", "resource": "share:docs/hello.txt"}]}
    latencies: list[float] = []
    lock = threading.Lock()
    # The clock starts once every client is made (making 32 takes a while on
    # a busy machine), and each client sends at least one request.
    began = stop = 0.0
    errors = 0

    def start_clock() -> None:  # run once, before any client is let go
        nonlocal began, stop
        began = time.monotonic()
        stop = began + seconds

    ready = threading.Barrier(clients, action=start_clock)

    def worker() -> None:
        nonlocal errors
        mine = []
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            ready.wait()
            while True:
                t = time.perf_counter()
                r = http.post("/v1/intents", json=body)
                mine.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors += 1
                if time.monotonic() >= stop:
                    break
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "n": len(latencies),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve")
    parser.add_argument("--port", type=int)
    parser.add_argument("--state", type=Path)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.state)
        return
    seconds = 1.0 if args.quick else 8.0
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        bare, bare_url = start("bare", state)
        broker, broker_url = start("broker", state)
        headers = {"Authorization": f"Bearer {(state / 'credential').read_text()}"}
        try:
            print(
                f"{'clients':>7} {'server':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
                f" {'errors':>6}"
            )
            rows = {}
            for clients in (1, 32):
                for name, url in (("bare", bare_url), ("broker", broker_url)):
                    load(url, headers, clients, 0.3)  # warm up
                    r = load(url, headers, clients, seconds)
                    rows[(clients, name)] = r
                    print(
                        f"{clients:>7} {name:>7} {r['rps']:>8.0f} {r['p50_ms']:>7.2f}"
                        f" {r['p99_ms']:>7.2f} {r['errors']:>6}"
                    )
            b, k = rows[(1, "bare")], rows[(1, "broker")]
            print(
                f"1 client: broker overhead p50 {k['p50_ms'] - b['p50_ms']:.2f} ms per allowed "
                f"action (target <= 5 ms); throughput ratio {k['rps'] / b['rps']:.2f}"
            )
            b, k = rows[(32, "bare")], rows[(32, "broker")]
            # Under load, latency is mostly queueing (clients / throughput); the
            # broker's own cost per action is the difference in service time.
            service_ms = (1 / k["rps"] - 1 / b["rps"]) * 1000
            print(
                f"32 clients: broker service time {service_ms:.2f} ms per allowed action "
                f"beyond the bare endpoint; throughput ratio {k['rps'] / b['rps']:.2f}"
            )
            if any(r["errors"] for r in rows.values()):
                raise SystemExit("some requests failed")
        finally:
            bare.terminate()
            broker.terminate()
            bare.wait()
            broker.wait()


if __name__ == "__main__":
    main()
