"""Plugins: a host call beside the same built-in action, and cold versus cached modules.

Measured in one run, on a development broker (state in a temporary folder,
development keys, the audit log fsync'd as in production):

  built-in file.stat   POST /v1/intents's path without HTTP: Broker.submit of one
                       file.stat intent (scope, policy, token minted, verified and
                       spent, audit plan.decided + action.done)
  plugin file.stat     one host call from inside a plugin run: the run's token
                       verified with its grant, scope, policy, the stat, audit
                       plugin.call. Per call = (run with n stats - run with 0) / n
  plugin run, 0 calls  a whole run of a verb that does nothing (load + signature
                       check, token mint + attenuation, instantiate, audit x2)

and for the module itself (the benchmark plugin, compiled from bench/plugin/):

  cold                 wasmtime.Module(engine, wasm): Cranelift compiles, then
                       instantiate and call
  deserialize          Module.deserialize of a serialized module, instantiate, call
  cached               the runtime's in-memory cache (what the broker does)

Ratios are against the built-in action and against "cached".

    .venv/bin/python bench/bench_plugins.py           # full run (~30 s)
    .venv/bin/python bench/bench_plugins.py --quick   # a few seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.box import open_box  # noqa: E402
from appliance.broker.grants import Grant  # noqa: E402
from appliance.config import Config  # noqa: E402
from appliance.intents import Intent  # noqa: E402
from appliance.plugins import package  # noqa: E402
from appliance.plugins.build import compile_plugin  # noqa: E402

MANIFEST = {
    "name": "bench",
    "version": "1.0.0",
    "publisher": "bench",
    "verbs": {"noop": "nothing", "stats": "n stats"},
    "capabilities": {"read": ["docs"]},
}


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke test)")
    args = ap.parse_args()
    runs, calls = (5, 20) if args.quick else (40, 200)

    tmp = Path(tempfile.mkdtemp(prefix="bench-plugins-"))
    share = tmp / "docs"
    share.mkdir()
    (share / "a.txt").write_text("a")
    plugin_dir = tmp / "dist" / "bench"
    plugin_dir.mkdir(parents=True)
    compile_plugin(Path(__file__).resolve().parent / "plugin", plugin_dir / "plugin.wasm")
    (plugin_dir / "manifest.json").write_text(json.dumps(MANIFEST))
    public = package.keygen(tmp / "key.pem")
    package.sign(plugin_dir, tmp / "key.pem")
    broker = open_box(
        Config(
            state_dir=tmp / "state",
            shares={"docs": share},
            dev=True,
            keystore="dev",
            plugin_publishers={"bench": public},
        )
    )
    try:
        broker.plugins.install(plugin_dir)
        secret, ref = broker.clients.new_pairing("bench", "bench", Grant(read=frozenset({"docs"})))
        broker.clients.set_pairing_status(ref, "approved")
        client = broker.clients.deliver(secret)["client_id"]
        stat = [Intent(verb="file.stat", resource="share:docs/a.txt")]

        def builtin() -> None:
            assert broker.submit(client, stat)["status"] == "done"

        def run(n: int) -> Callable[[], object]:
            value = {"resource": "share:docs/a.txt", "n": n}
            return lambda: broker.run_plugin(client, "bench", "stats", value)

        builtin(), run(1)()  # warm up
        b = statistics.median(timed(builtin, runs * 2))
        zero = statistics.median(timed(run(0), runs))
        many = statistics.median(timed(run(calls), runs))
        per_call = (many - zero) / calls

        wasm = (plugin_dir / "plugin.wasm").read_bytes()
        runtime = broker.plugins.runtime
        limits = broker.config.plugin_limits
        serialized = wasmtime.Module(runtime.engine, wasm).serialize()

        def call(module: wasmtime.Module) -> None:
            runtime.run(
                module, "noop", input_=b"{}", capability=b"", call=lambda r: b"", limits=limits
            )

        cold = statistics.median(timed(lambda: call(runtime.compile("x", wasm, cache=False)), runs))
        deser = statistics.median(
            timed(lambda: call(wasmtime.Module.deserialize(runtime.engine, serialized)), runs * 4)
        )
        cached_module = runtime.compile("bench", wasm)
        cached = statistics.median(timed(lambda: call(cached_module), runs * 4))
    finally:
        broker.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"plugins: wasmtime {version('wasmtime')}, module {len(wasm)} bytes (AssemblyScript)")
    print(f"{'what':<28}{'median ms':>11}{'ratio':>9}")
    print(f"{'built-in file.stat action':<28}{b * 1e3:>11.3f}{1:>9.2f}")
    print(f"{'plugin file.stat host call':<28}{per_call * 1e3:>11.3f}{per_call / b:>9.2f}")
    print(f"{'plugin run, 0 calls':<28}{zero * 1e3:>11.3f}{zero / b:>9.2f}")
    print(f"{'module: cold compile':<28}{cold * 1e3:>11.3f}{cold / cached:>9.2f}")
    print(f"{'module: deserialize':<28}{deser * 1e3:>11.3f}{deser / cached:>9.2f}")
    print(f"{'module: cached':<28}{cached * 1e3:>11.3f}{1:>9.2f}")
    print(f"({calls} calls per run, {runs} runs; module ratios against cached)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
