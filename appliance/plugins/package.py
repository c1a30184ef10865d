"""A plugin on disk: module + manifest + signature, checked before anything runs.

A plugin is a folder of three files:

    plugin.wasm      the WebAssembly module
    manifest.json    name, version, publisher, the module's sha256, the verbs it
                     exports and the capabilities it needs
    signature.json   {"publisher": NAME, "signature": base64 Ed25519 over the
                     manifest's exact bytes}

The manifest names the module by hash and the signature covers the manifest,
so one signature pins both. :func:`load` refuses, with the reason, a plugin
that is unsigned, signed by a publisher the owner has not pinned, whose
manifest or module was changed after signing, or whose manifest is malformed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import ApplianceError, NotFound
from appliance.issuer.plugin_tokens import PluginGrant

MODULE = "plugin.wasm"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
MAX_MODULE_BYTES = 16 << 20
MAX_MANIFEST_BYTES = 64 << 10
MAX_SIGNATURE_BYTES = 4 << 10

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
VERB = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
SHARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,32}$")


class PluginRefused(ApplianceError):
    """A plugin that must not load (unsigned, unpinned, tampered, malformed)."""

    status = 422
    code = "plugin_refused"


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    publisher: str
    module_sha256: str
    verbs: dict[str, str]  # exported function -> what it does
    grant: PluginGrant
    description: str = ""

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise PluginRefused(f"{MANIFEST} is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise PluginRefused(f"{MANIFEST} must be a JSON object")
        known = {
            "name",
            "version",
            "publisher",
            "module_sha256",
            "verbs",
            "capabilities",
            "description",
        }
        if set(data) - known:
            raise PluginRefused(f"{MANIFEST} has unknown fields {sorted(set(data) - known)}")

        def text(key: str, pattern: re.Pattern[str]) -> str:
            value = data.get(key)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise PluginRefused(f"{MANIFEST}: {key} is missing or malformed")
            return value

        verbs = data.get("verbs")
        if (
            not isinstance(verbs, dict)
            or not verbs
            or not all(isinstance(k, str) and VERB.fullmatch(k) for k in verbs)
            or not all(isinstance(v, str) for v in verbs.values())
        ):
            raise PluginRefused(f"{MANIFEST}: verbs must map function names to descriptions")
        caps = data.get("capabilities", {})
        if not isinstance(caps, dict) or set(caps) - {"read", "write", "hosts"}:
            raise PluginRefused(f"{MANIFEST}: capabilities takes read, write and hosts")

        def names(key: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
            value = caps.get(key, [])
            if not isinstance(value, list) or not all(
                isinstance(v, str) and pattern.fullmatch(v) for v in value
            ):
                raise PluginRefused(f"{MANIFEST}: capabilities.{key} is malformed")
            return tuple(sorted(set(value)))

        grant = PluginGrant(
            read=names("read", SHARE),
            write=names("write", SHARE),
            hosts=tuple(normalise_origin(h) for h in names("hosts", ORIGIN)),
        )
        sha = data.get("module_sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise PluginRefused(f"{MANIFEST}: module_sha256 is missing or malformed")
        return cls(
            name=text("name", NAME),
            version=text("version", VERSION),
            publisher=text("publisher", NAME),
            module_sha256=sha,
            verbs=dict(verbs),
            grant=grant,
            description=str(data.get("description", ""))[:500],
        )


def normalise_origin(origin: str) -> str:
    """``http://Host`` -> ``http://host:80``: one spelling per origin."""
    scheme, _, rest = origin.partition("://")
    host, _, port = rest.partition(":")
    return f"{scheme.lower()}://{host.lower()}:{port or (443 if scheme == 'https' else 80)}"


@dataclass(frozen=True)
class Plugin:
    manifest: Manifest
    module: bytes = field(repr=False)
    sha256: str  # of the module

    def public(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "publisher": m.publisher,
            "sha256": self.sha256,
            "description": m.description,
            "verbs": m.verbs,
            "capabilities": {
                "read": list(m.grant.read),
                "write": list(m.grant.write),
                "hosts": list(m.grant.hosts),
            },
        }


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise PluginRefused(
            f"{what} is missing ({path.name})",
            code="plugin_unsigned" if path.name == SIGNATURE else "plugin_refused",
        ) from None
    except OSError as e:
        raise PluginRefused(f"{what} cannot be read: {e.strerror}") from None
    if len(data) > limit:
        raise PluginRefused(f"{what} is over {limit} bytes")
    return data


def public_key(b64: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error):
        raise PluginRefused("a pinned publisher key is not base64 of 32 bytes") from None


def load(directory: Path, publishers: dict[str, str]) -> Plugin:
    """Read and check a plugin folder; refuse with the reason, never half-load."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"no plugin at {directory}")
    raw_sig = _read(directory / SIGNATURE, MAX_SIGNATURE_BYTES, "the signature")
    raw_manifest = _read(directory / MANIFEST, MAX_MANIFEST_BYTES, "the manifest")
    module = _read(directory / MODULE, MAX_MODULE_BYTES, "the module")
    try:
        sig = json.loads(raw_sig)
        publisher, signature = sig["publisher"], base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise PluginRefused(f"{SIGNATURE} is malformed", code="plugin_unsigned") from None
    if not isinstance(publisher, str) or publisher not in publishers:
        raise PluginRefused(
            f"the plugin is signed by publisher {str(publisher)[:64]!r}, whose key is not pinned "
            "in the configuration (plugin_publishers)",
            code="plugin_unpinned",
        )
    try:
        public_key(publishers[publisher]).verify(signature, raw_manifest)
    except InvalidSignature:
        raise PluginRefused(
            f"the manifest's signature does not verify with {publisher!r}'s pinned key: "
            "the manifest was changed after signing, or signed by another key",
            code="plugin_tampered",
        ) from None
    manifest = Manifest.parse(raw_manifest)
    if manifest.publisher != publisher:
        raise PluginRefused(
            f"the manifest names publisher {manifest.publisher!r} but {publisher!r} signed it",
            code="plugin_tampered",
        )
    sha = hashlib.sha256(module).hexdigest()
    if sha != manifest.module_sha256:
        raise PluginRefused(
            f"the module's sha256 {sha[:16]}... is not the one the signed manifest names "
            f"({manifest.module_sha256[:16]}...): the module was changed after signing",
            code="plugin_tampered",
        )
    return Plugin(manifest, module, sha)


# ---------------------------------------------------------------------- publishing
def keygen(path: Path) -> str:
    """Write a new publisher private key (PEM, 0600); return its public key (base64)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_b64(key)


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign(directory: Path, key_path: Path) -> dict[str, Any]:
    """Publisher side: put the module's hash into the manifest, then sign the manifest."""
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise PluginRefused("the signing key must be an Ed25519 private key")
    directory = Path(directory)
    data = json.loads(_read(directory / MANIFEST, MAX_MANIFEST_BYTES, "the manifest"))
    module = _read(directory / MODULE, MAX_MODULE_BYTES, "the module")
    data["module_sha256"] = hashlib.sha256(module).hexdigest()
    raw = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    Manifest.parse(raw)  # refuse to sign what would not load
    (directory / MANIFEST).write_bytes(raw)
    signature = {
        "publisher": data["publisher"],
        "signature": base64.b64encode(key.sign(raw)).decode(),
    }
    (directory / SIGNATURE).write_text(json.dumps(signature) + "\n")
    return {**signature, "public_key": public_b64(key), "module_sha256": data["module_sha256"]}


# ---------------------------------------------------------------------- installed plugins
class PluginStore:
    """Installed plugins, one checked folder each under the state directory."""

    def __init__(self, root: Path, publishers: dict[str, str]):
        self.root = Path(root)
        self.publishers = publishers

    def install(self, source: Path) -> Plugin:
        """Check ``source`` fully, then copy it in (replacing an older version)."""
        plugin = load(source, self.publishers)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        dest = self.root / plugin.manifest.name
        tmp = self.root / f".installing-{plugin.manifest.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        for name in (MODULE, MANIFEST, SIGNATURE):
            shutil.copyfile(Path(source) / name, tmp / name)
        load(tmp, self.publishers)  # what was copied is what was checked
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        return plugin

    def get(self, name: str) -> Plugin:
        if not NAME.fullmatch(name):
            raise NotFound(f"no plugin {name[:64]!r}")
        return load(self.root / name, self.publishers)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME.fullmatch(p.name))

    def list(self) -> list[dict[str, Any]]:
        """Every installed plugin, checked again now; a refused one says why."""
        out = []
        for name in self.names():
            try:
                out.append({**self.get(name).public(), "status": "ok"})
            except ApplianceError as e:
                out.append({"name": name, "status": "refused", "error": e.to_dict()})
        return out

    def remove(self, name: str) -> None:
        if name not in self.names():
            raise NotFound(f"no plugin {name[:64]!r} is installed")
        shutil.rmtree(self.root / name)
