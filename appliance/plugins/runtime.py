"""The plugin runtime: wasmtime, with fuel, a memory cap and bounded output.

The seam between the broker and untrusted code. A module sees no WASI, no
files, no clock, no network: only the eight functions of the "appliance"
import module below, each of which goes back to the broker. Every run gets a
fresh Store (fresh memory), a fuel budget (one unit per wasm instruction,
roughly), a linear-memory cap, and caps on what it may log and output. Any
limit hit stops the run with :class:`PluginStopped` naming the limit.

Compiled modules are cached in memory by their sha256, so a second run skips
Cranelift (see bench/bench_plugins.py for what that saves).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import wasmtime

from appliance.config import PluginLimits
from appliance.errors import ApplianceError

I32 = wasmtime.ValType.i32()
# The host interface: name -> (params, results). Nothing else may be imported.
HOST_FUNCS: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    "input_len": ([], [I32]),
    "input": ([I32], []),
    "capability_len": ([], [I32]),
    "capability": ([I32], []),
    "call": ([I32, I32], [I32]),
    "result": ([I32], []),
    "log": ([I32, I32], []),
    "output": ([I32, I32], []),
}
HOST_MODULE = "appliance"
MODULE_CACHE_SIZE = 32
PAGE = 65536


class PluginStopped(ApplianceError):
    """A run was stopped: a limit was hit, the plugin trapped, or a call was refused."""

    status = 422
    code = "plugin_stopped"


@dataclass
class RunResult:
    output: bytes
    logs: list[str] = field(default_factory=list)
    fuel_used: int = 0


class _Run:
    """The state one run's host functions share."""

    def __init__(self, input_: bytes, capability: bytes, limits: PluginLimits):
        self.input = input_
        self.capability = capability
        self.limits = limits
        self.output = bytearray()
        self.logs: list[str] = []
        self.pending = b""  # the last call's answer, until the plugin fetches it


def _memory(caller: wasmtime.Caller) -> wasmtime.Memory:
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory):
        raise PluginStopped("the module exports no memory", code="plugin_trap")
    return mem


def _read(caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
    mem = _memory(caller)
    if ptr < 0 or length < 0 or ptr + length > mem.data_len(caller):
        raise PluginStopped(
            f"the plugin passed a buffer outside its memory ({ptr}+{length})", code="plugin_trap"
        )
    return bytes(mem.read(caller, ptr, ptr + length))


def _write(caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
    mem = _memory(caller)
    if ptr < 0 or ptr + len(data) > mem.data_len(caller):
        raise PluginStopped(
            f"the plugin passed a buffer outside its memory ({ptr}+{len(data)})",
            code="plugin_trap",
        )
    mem.write(caller, data, ptr)


class Runtime:
    """One wasmtime engine for all plugins; a fresh store per run."""

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        self.engine = wasmtime.Engine(config)
        self._modules: OrderedDict[str, wasmtime.Module] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, sha256: str, wasm: bytes, *, cache: bool = True) -> wasmtime.Module:
        """The compiled module (cached by hash), after checking its imports and exports."""
        with self._lock:
            module = self._modules.get(sha256) if cache else None
            if module is not None:
                self._modules.move_to_end(sha256)
                return module
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as e:
            raise PluginStopped(
                f"the module is not valid WebAssembly: {str(e).splitlines()[0]}",
                code="plugin_invalid",
            ) from None
        check_interface(module)
        if cache:
            with self._lock:
                self._modules[sha256] = module
                while len(self._modules) > MODULE_CACHE_SIZE:
                    self._modules.popitem(last=False)
        return module

    def run(
        self,
        module: wasmtime.Module,
        verb: str,
        *,
        input_: bytes,
        capability: bytes,
        call: Callable[[bytes], bytes],
        limits: PluginLimits,
    ) -> RunResult:
        """Call the exported function ``verb``; stop at the first limit hit."""
        store = wasmtime.Store(self.engine)
        store.set_fuel(limits.fuel)
        store.set_limits(memory_size=limits.memory_bytes, instances=1, tables=4, memories=1)
        state = _Run(input_, capability, limits)
        linker = wasmtime.Linker(self.engine)
        for name, fn in _host_functions(state, call).items():
            params, results = HOST_FUNCS[name]
            linker.define_func(
                HOST_MODULE, name, wasmtime.FuncType(params, results), fn, access_caller=True
            )
        instance: wasmtime.Instance | None = None
        try:
            instance = linker.instantiate(store, module)
            func = instance.exports(store).get(verb)
            ty = func.type(store) if isinstance(func, wasmtime.Func) else None
            if not isinstance(func, wasmtime.Func) or ty is None or ty.params or ty.results:
                raise PluginStopped(
                    f"the module exports no function {verb!r} taking and returning nothing",
                    code="plugin_invalid",
                )
            func(store)
        except wasmtime.Trap as trap:
            raise _explain(trap, instance_memory(store, instance), limits) from None
        except wasmtime.WasmtimeError as e:
            raise PluginStopped(
                f"the plugin could not start: {str(e).splitlines()[0]}", code="plugin_trap"
            ) from None
        return RunResult(bytes(state.output), state.logs, limits.fuel - store.get_fuel())


def instance_memory(store: wasmtime.Store, instance: wasmtime.Instance | None) -> int:
    """The run's linear memory size in bytes (0 if it never started)."""
    if instance is None:
        return 0
    mem = instance.exports(store).get("memory")
    return mem.data_len(store) if isinstance(mem, wasmtime.Memory) else 0


def _explain(trap: wasmtime.Trap, memory: int, limits: PluginLimits) -> PluginStopped:
    if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        return PluginStopped(
            f"the plugin used all its fuel ({limits.fuel:,} units) and was stopped "
            "(an endless or too long computation)",
            code="plugin_out_of_fuel",
        )
    # A refused memory.grow makes the plugin's allocator trap; it shows as the
    # memory sitting at the cap when the trap happens.
    if memory + 64 * PAGE >= limits.memory_bytes:
        return PluginStopped(
            f"the plugin reached its memory limit ({limits.memory_bytes >> 20} MiB) and was "
            "stopped",
            code="plugin_memory_limit",
        )
    first = trap.message.splitlines()[0] if trap.message else "trap"
    return PluginStopped(f"the plugin trapped: {first}", code="plugin_trap")


def check_interface(module: wasmtime.Module) -> None:
    """Refuse a module that imports anything but the host interface (no WASI,
    no foreign memory) or has no memory export."""
    for imp in module.imports:
        want = HOST_FUNCS.get(imp.name or "") if imp.module == HOST_MODULE else None
        ty = imp.type
        ok = (
            want is not None
            and isinstance(ty, wasmtime.FuncType)
            and [str(p) for p in ty.params] == [str(p) for p in want[0]]
            and [str(r) for r in ty.results] == [str(r) for r in want[1]]
        )
        if not ok:
            raise PluginStopped(
                f"the module imports {imp.module}.{imp.name}, which the appliance does not "
                "provide (plugins get only the appliance host interface; no WASI)",
                code="plugin_invalid",
            )
    if not any(
        e.name == "memory" and isinstance(e.type, wasmtime.MemoryType) for e in module.exports
    ):
        raise PluginStopped("the module exports no memory", code="plugin_invalid")


def _host_functions(
    state: _Run, call: Callable[[bytes], bytes]
) -> dict[str, Callable[..., object]]:
    limits = state.limits

    def input_len(caller: wasmtime.Caller) -> int:
        return len(state.input)

    def input_(caller: wasmtime.Caller, ptr: int) -> None:
        _write(caller, ptr, state.input)

    def capability_len(caller: wasmtime.Caller) -> int:
        return len(state.capability)

    def capability(caller: wasmtime.Caller, ptr: int) -> None:
        _write(caller, ptr, state.capability)

    def call_(caller: wasmtime.Caller, ptr: int, length: int) -> int:
        state.pending = call(_read(caller, ptr, length))
        return len(state.pending)

    def result(caller: wasmtime.Caller, ptr: int) -> None:
        _write(caller, ptr, state.pending)
        state.pending = b""

    def log(caller: wasmtime.Caller, ptr: int, length: int) -> None:
        if len(state.logs) >= limits.log_lines:
            raise PluginStopped(
                f"the plugin wrote more than {limits.log_lines} log lines and was stopped",
                code="plugin_log_limit",
            )
        line = _read(caller, ptr, min(length, limits.log_line_bytes))
        state.logs.append(line.decode("utf-8", "replace"))

    def output(caller: wasmtime.Caller, ptr: int, length: int) -> None:
        if len(state.output) + length > limits.output_bytes:
            raise PluginStopped(
                f"the plugin's output went over {limits.output_bytes} bytes and it was stopped",
                code="plugin_output_limit",
            )
        state.output += _read(caller, ptr, length)

    return {
        "input_len": input_len,
        "input": input_,
        "capability_len": capability_len,
        "capability": capability,
        "call": call_,
        "result": result,
        "log": log,
        "output": output,
    }
