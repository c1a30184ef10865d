"""The snapshot store: content-addressed blobs plus JSON manifests.

Everything a file action is about to change or remove is copied here first,
so an undo can put it back and a crash can never lose it.

Layout under ``directory``::

    objects/ab/cdef...   blob named by the sha256 of its bytes (read-only)
    manifests/<id>.json  a snapshot; <id> is the sha256 of its canonical JSON
    tmp/                 files being written (a crash may leave some behind)

Every write goes temp file -> fsync -> rename -> fsync of the directory, so a
name in ``objects/`` or ``manifests/`` always refers to complete, durable
bytes. Writing the same blob or manifest twice is harmless (same name, same
bytes). A manifest is only saved once every blob it names is present.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import ApplianceError
from appliance.intents import canonical_json

HEX64 = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20
MANIFEST_VERSION = 1


class SnapshotError(ApplianceError):
    """The snapshot store is unusable or something in it is damaged."""

    status = 500
    code = "snapshot_failed"


def manifest_id(manifest: dict[str, Any]) -> str:
    """The id of a manifest: sha256 of its canonical JSON without the ``id`` key."""
    body = {k: v for k, v in manifest.items() if k != "id"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _check_hex(value: str, what: str) -> str:
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        raise SnapshotError(f"malformed {what} {value!r}")
    return value


class SnapshotStore:
    """Content-addressed blobs and snapshot manifests under one directory."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.objects = self.directory / "objects"
        self.manifests = self.directory / "manifests"
        self.tmp = self.directory / "tmp"
        for d in (self.directory, self.objects, self.manifests, self.tmp):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- blobs -------------------------------------------------------------

    def blob_path(self, sha: str) -> Path:
        _check_hex(sha, "blob id")
        return self.objects / sha[:2] / sha[2:]

    def has_blob(self, sha: str) -> bool:
        return self.blob_path(sha).is_file()

    def open_blob(self, sha: str) -> BinaryIO:
        """Open a blob for reading. Callers that restore data re-hash what they read."""
        path = self.blob_path(sha)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise SnapshotError(f"blob {sha} is missing from the snapshot store") from None

    def put_file_from_fd(self, fd: int) -> str:
        """Copy a file's whole content (read with pread from offset 0) into the store."""
        tmp_fd, tmp_path = self._tmp_file()
        h = hashlib.sha256()
        try:
            offset = 0
            while True:
                chunk = os.pread(fd, CHUNK, offset)
                if not chunk:
                    break
                h.update(chunk)
                _write_all(tmp_fd, chunk)
                offset += len(chunk)
            os.fsync(tmp_fd)
        except BaseException:
            os.close(tmp_fd)
            _unlink_quietly(tmp_path)
            raise
        os.close(tmp_fd)
        return self._install(tmp_path, h.hexdigest())

    def put_bytes(self, data: bytes) -> str:
        """Store bytes held in memory; returns their sha256."""
        tmp_fd, tmp_path = self._tmp_file()
        try:
            _write_all(tmp_fd, data)
            os.fsync(tmp_fd)
        except BaseException:
            os.close(tmp_fd)
            _unlink_quietly(tmp_path)
            raise
        os.close(tmp_fd)
        return self._install(tmp_path, hashlib.sha256(data).hexdigest())

    def _tmp_file(self) -> tuple[int, Path]:
        path = self.tmp / secrets.token_hex(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, path

    def _install(self, tmp_path: Path, sha: str) -> str:
        final = self.blob_path(sha)
        fan = final.parent
        if not fan.is_dir():
            fan.mkdir(mode=0o700, exist_ok=True)
            _fsync_path(self.objects)
        os.chmod(tmp_path, 0o400)
        try:
            # Replacing an existing blob replaces it with identical bytes.
            os.rename(tmp_path, final)
        except BaseException:
            _unlink_quietly(tmp_path)
            raise
        _fsync_path(fan)
        return sha

    # -- manifests ---------------------------------------------------------

    def save(self, manifest: dict[str, Any]) -> str:
        """Store a manifest (blobs first, checked here) and return its id."""
        body = {k: v for k, v in manifest.items() if k != "id"}
        for entry in body.get("files", []):
            if not self.has_blob(entry["sha256"]):
                raise SnapshotError(f"manifest names blob {entry['sha256']} that is not stored")
        sid = manifest_id(body)
        data = canonical_json({"id": sid, **body})
        final = self.manifests / f"{sid}.json"
        if final.is_file():
            return sid
        tmp_fd, tmp_path = self._tmp_file()
        try:
            _write_all(tmp_fd, data)
            os.fsync(tmp_fd)
            os.close(tmp_fd)
            tmp_fd = -1
            os.rename(tmp_path, final)
        except BaseException:
            if tmp_fd >= 0:
                os.close(tmp_fd)
            _unlink_quietly(tmp_path)
            raise
        _fsync_path(self.manifests)
        return sid

    def exists(self, snapshot_id: str) -> bool:
        return (self.manifests / f"{_check_hex(snapshot_id, 'snapshot id')}.json").is_file()

    def load(self, snapshot_id: str) -> dict[str, Any]:
        """Read a manifest back; refuses one whose content does not match its id."""
        path = self.manifests / f"{_check_hex(snapshot_id, 'snapshot id')}.json"
        try:
            manifest = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {snapshot_id} does not exist") from None
        except ValueError:
            raise SnapshotError(f"snapshot {snapshot_id} is damaged (not JSON)") from None
        if not isinstance(manifest, dict) or manifest.get("id") != snapshot_id:
            raise SnapshotError(f"snapshot {snapshot_id} is damaged (wrong id)")
        if manifest_id(manifest) != snapshot_id:
            raise SnapshotError(f"snapshot {snapshot_id} is damaged (content does not match id)")
        return manifest

    def snapshot_ids(self) -> list[str]:
        return sorted(p.stem for p in self.manifests.glob("*.json") if HEX64.fullmatch(p.stem))

    def saved_at(self, snapshot_id: str) -> float:
        """When the manifest was saved (its file's time), for snapshots that
        earlier versions stored without a retention record."""
        return (self.manifests / f"{_check_hex(snapshot_id, 'snapshot id')}.json").stat().st_mtime

    def remove(self, snapshot_id: str) -> bool:
        """Forget a snapshot (retention); its blobs go at the next
        :meth:`collect_garbage`, unless another snapshot names them."""
        path = self.manifests / f"{_check_hex(snapshot_id, 'snapshot id')}.json"
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_path(self.manifests)
        return True

    def collect_garbage(self) -> int:
        """Remove every blob no saved manifest names, and leftovers in tmp/;
        returns the bytes freed. A manifest that cannot be read keeps every
        blob (nothing it might name is removed)."""
        named: set[str] = set()
        for sid in self.snapshot_ids():
            try:
                named.update(f["sha256"] for f in self.load(sid)["files"])
            except (SnapshotError, KeyError, TypeError):
                return 0
        freed = 0
        for fan in self.objects.iterdir():
            for blob in fan.iterdir():
                if fan.name + blob.name not in named:
                    freed += blob.stat().st_size
                    blob.unlink()
        for leftover in self.tmp.iterdir():
            freed += leftover.stat().st_size
            leftover.unlink()
        _fsync_path(self.objects)
        return freed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_path(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    # A leftover in tmp/ is harmless; it is never named by a manifest.
    with contextlib.suppress(OSError):
        os.unlink(path)
