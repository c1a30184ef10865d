"""Build an AssemblyScript plugin from source: ``python -m appliance.plugins.build DIR...``.

Each DIR holds ``index.ts`` and an unsigned ``manifest.json``; the result is
``plugins/build/NAME/`` with ``plugin.wasm`` and the manifest, ready for
``appliance plugins sign``. The compiler is the AssemblyScript version pinned
in ``plugins/package-lock.json`` (``make setup`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from appliance.errors import ApplianceError

TOOLCHAIN = Path(__file__).resolve().parents[2] / "plugins"
# The incremental runtime collects garbage, so a long run's temporary strings
# do not pile up against the memory limit; abort= drops the env.abort import
# (an abort, e.g. out of memory, traps).
ASC_FLAGS = ("--runtime", "incremental", "-O2", "--use", "abort=")


def compile_plugin(source: Path, out: Path, toolchain: Path = TOOLCHAIN) -> Path:
    """Compile ``source/index.ts`` to ``out`` (a .wasm file)."""
    asc = toolchain / "node_modules" / ".bin" / "asc"
    if not asc.exists():
        raise ApplianceError(
            f"the AssemblyScript compiler is not installed in {toolchain} (run: make setup)",
            code="toolchain_missing",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(asc), str(Path(source).resolve() / "index.ts"), "-o", str(out.resolve()), *ASC_FLAGS],
        cwd=toolchain,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise ApplianceError(
            f"asc could not compile {source}: {done.stderr.strip()[-2000:]}", code="build_failed"
        )
    return out


def build(source: Path, dest_root: Path = TOOLCHAIN / "build") -> Path:
    """``source`` -> ``dest_root/NAME/{plugin.wasm, manifest.json}`` (unsigned)."""
    source = Path(source)
    dest = dest_root / source.name
    compile_plugin(source, dest / "plugin.wasm")
    shutil.copyfile(source / "manifest.json", dest / "manifest.json")
    return dest


def main(argv: list[str]) -> int:
    for source in argv:
        print(build(Path(source)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
