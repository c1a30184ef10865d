"""Undo records: how to reverse one done action, stored with it.

A file action stores its record *before* it changes anything (see
``FileOps.execute(..., before_change=...)``), so a stop at any moment leaves
either nothing done or a change the record can reverse. The record is plain
JSON in the database; :meth:`UndoRecord.from_json` refuses a record whose
shape does not fit its verb (a damaged or edited database) with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.errors import ExecutionError
from appliance.verbs import REGISTRY, Undo

# Which fields each way of undoing needs (JSON names).
_NEEDS: dict[Undo, tuple[str, ...]] = {
    Undo.remove_created: ("target", "sha256"),
    Undo.move_back: ("from", "to", "snapshot_id"),
    Undo.restore: ("target", "snapshot_id"),
    Undo.remove_dirs: ("created",),
}


@dataclass(frozen=True)
class UndoRecord:
    verb: str
    target: str = ""  # write, copy, delete: the path the action made or removed
    source: str = ""  # move, rename: where it was
    dest: str = ""  # move, rename: where it went
    snapshot_id: str = ""  # move, rename, delete: what was saved first
    sha256: str = ""  # write, copy: the content it made
    created: tuple[str, ...] = ()  # mkdir: the folders it made, outermost first

    @property
    def how(self) -> Undo:
        return REGISTRY[self.verb].undo

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "target": self.target,
            "from": self.source,
            "to": self.dest,
            "snapshot_id": self.snapshot_id,
            "sha256": self.sha256,
            "created": list(self.created),
        }
        return {"verb": self.verb, **{k: values[k] for k in _NEEDS[self.how]}}

    @classmethod
    def from_json(cls, raw: object) -> UndoRecord:
        if not isinstance(raw, dict) or not isinstance(raw.get("verb"), str):
            raise ExecutionError("malformed undo record")
        verb = raw["verb"]
        spec = REGISTRY.get(verb)
        if spec is None or spec.undo not in _NEEDS:
            raise ExecutionError(f"{verb} has no undo")
        for key in _NEEDS[spec.undo]:
            value = raw.get(key)
            ok = (
                isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
                if key == "created"
                else isinstance(value, str)
            )
            if not ok:
                raise ExecutionError(f"malformed undo record (no {key})")
        need = _NEEDS[spec.undo]

        def field(key: str) -> str:
            return str(raw[key]) if key in need else ""

        return cls(
            verb=verb,
            target=field("target"),
            source=field("from"),
            dest=field("to"),
            snapshot_id=field("snapshot_id"),
            sha256=field("sha256"),
            created=tuple(raw["created"]) if "created" in need else (),
        )
