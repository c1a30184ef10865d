"""Undo records: how to reverse one done action, stored with it.

A file action stores its record *before* it changes anything (see
``FileOps.execute(..., before_change=...)``), so a stop at any moment leaves
either nothing done or a change the record can reverse. The record is plain
JSON in the database; :meth:`UndoRecord.from_json` refuses a record whose
shape does not fit its verb (a damaged or edited database) with a reason.

Each way of undoing has one or more shapes, newest first; records stored by
earlier versions (a move or delete with a content snapshot, a copy with a
content hash) keep their shape and are still undone the way they were made:

| undo | shape | undone by |
|---|---|---|
| move back | from, to, identity | moving it back, if what stands at ``to`` is still it |
| move back | from, to, snapshot_id | (earlier records) the same, if the content matches |
| restore | target, trash, identity | renaming it back out of the share's trash |
| restore | target, snapshot_id | rebuilding it from the snapshot store |
| remove created | target, identity | putting it in the trash, if it is still what was made |
| remove created | target, sha256 | the same, if its content still hashes the same |
| remove dirs | created | removing the (still empty) folders |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from appliance.broker.files.identity import Identity
from appliance.errors import ExecutionError
from appliance.verbs import REGISTRY, Undo

# Which fields each way of undoing needs (JSON names), one tuple per shape.
_SHAPES: dict[Undo, tuple[tuple[str, ...], ...]] = {
    Undo.remove_created: (("target", "identity"), ("target", "sha256")),
    Undo.move_back: (("from", "to", "identity"), ("from", "to", "snapshot_id")),
    Undo.restore: (("target", "trash", "identity"), ("target", "snapshot_id")),
    Undo.remove_dirs: (("created",),),
}
TRASH_ITEM = re.compile(r"[0-9a-f]{16}\Z")


@dataclass(frozen=True)
class UndoRecord:
    verb: str
    target: str = ""  # write, copy, delete: the path the action made or removed
    source: str = ""  # move, rename: where it was
    dest: str = ""  # move, rename: where it went
    snapshot_id: str = ""  # (earlier) move, rename; a delete across file systems
    sha256: str = ""  # write: the content it made
    created: tuple[str, ...] = ()  # mkdir: the folders it made, outermost first
    trash: str = ""  # delete: the item's name in the share's trash
    identity: Identity | None = None  # what was moved, trashed or made

    @property
    def how(self) -> Undo:
        return REGISTRY[self.verb].undo

    def _values(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "from": self.source,
            "to": self.dest,
            "snapshot_id": self.snapshot_id,
            "sha256": self.sha256,
            "created": list(self.created),
            "trash": self.trash,
            "identity": self.identity.to_json() if self.identity else None,
        }

    def to_json(self) -> dict[str, Any]:
        values = self._values()
        for shape in _SHAPES[self.how]:
            if all(values[k] for k in shape):
                return {"verb": self.verb, **{k: values[k] for k in shape}}
        raise ExecutionError(f"an undo record of {self.verb} without what it needs")

    @classmethod
    def from_json(cls, raw: object) -> UndoRecord:
        if not isinstance(raw, dict) or not isinstance(raw.get("verb"), str):
            raise ExecutionError("malformed undo record")
        verb = raw["verb"]
        spec = REGISTRY.get(verb)
        if spec is None or spec.undo not in _SHAPES:
            raise ExecutionError(f"{verb} has no undo")
        shapes = _SHAPES[spec.undo]
        # The shape whose fields are there; a record missing one names the
        # first that is absent from the newest shape.
        need = next((s for s in shapes if all(k in raw for k in s)), None)
        if need is None:
            missing = next(k for k in shapes[0] if k not in raw)
            raise ExecutionError(f"malformed undo record (no {missing})")
        for key in need:
            value = raw[key]
            if key == "created":
                ok = isinstance(value, list) and bool(value)
                ok = ok and all(isinstance(v, str) for v in value)
            elif key == "identity":
                ok = isinstance(value, dict)
            elif key == "trash":
                ok = isinstance(value, str) and bool(TRASH_ITEM.match(value))
            else:
                ok = isinstance(value, str)
            if not ok:
                raise ExecutionError(f"malformed undo record (no {key})")

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
            trash=field("trash"),
            identity=Identity.from_json(raw["identity"]) if "identity" in need else None,
        )
