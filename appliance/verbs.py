"""Every verb the appliance knows, declared once.

A verb is one entry in :data:`REGISTRY`: its name, its parameters (type,
required, whether the value names another resource), whether it reads or
changes, the Cedar action group its policy rules use, how it is undone, and
who may ask for it (a desktop's plan, a plugin's host call). Everything else
derives from this table:

* intent validation and the plan's JSON schema (``appliance.intents``);
* the executor's dispatch (``appliance.broker.files`` registers one handler
  per file verb and checks at import that the two agree);
* the policy engine's verb sets (``appliance.policy.engine``), checked
  against the Cedar schema's action declarations when the policy loads;
* the plugin host's operations and the plugin token's grant check
  (``appliance.plugins.host``, ``appliance.issuer.tokens``).

Adding a verb is one entry here, its handler, and its tests.

This module imports nothing of the appliance: the agent, the least trusted
process, reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Group(StrEnum):
    """The Cedar action group a verb belongs to (``Action::"read"`` ...)."""

    read = "read"
    change = "change"
    view = "view"  # a desktop reading the API: plans, tasks, approvals, the audit log
    none = ""  # pairing and network requests are decided by rules of their own


class ResourceKind(StrEnum):
    """What a verb's resource is, as the policy sees it."""

    file = "file"  # share:NAME/path
    appliance = "appliance"  # the box itself (pairing)
    host = "host"  # a web origin (a plugin's HTTP request)
    record = "record"  # a plan, task or approval, or the audit log, as the API shows it


class Undo(StrEnum):
    """How a done action of the verb is reversed."""

    none = "none"  # it changed nothing
    remove_created = "remove_created"  # remove the file it made, if unchanged
    move_back = "move_back"  # move it back where it was, if unchanged
    restore = "restore"  # put the snapshot back
    remove_dirs = "remove_dirs"  # remove the (still empty) folders it made
    reverse = "reverse"  # action.undo: reverses another action (itself not undone)


@dataclass(frozen=True)
class Param:
    """One parameter of a verb."""

    type: type
    required: bool = False
    # The value names another resource (share:NAME/path): it goes through
    # scope resolution and the policy sees it as the destination.
    resource: bool = False
    choices: tuple[str, ...] = ()  # allowed values of a string parameter (empty: any)


@dataclass(frozen=True)
class VerbSpec:
    name: str
    params: MappingProxyType[str, Param] = field(default_factory=lambda: MappingProxyType({}))
    changes: bool = False  # False: it only reads
    group: Group = Group.read
    resource: ResourceKind = ResourceKind.file
    undo: Undo = Undo.none
    intent: bool = True  # a desktop (or the model) may name it in a plan
    plugin: bool = False  # a plugin may call it as a host operation
    summary: str = ""

    @property
    def resource_params(self) -> tuple[str, ...]:
        return tuple(n for n, p in self.params.items() if p.resource)


def _read(verb: str, summary: str, params: dict[str, Param] | None = None) -> VerbSpec:
    return VerbSpec(verb, MappingProxyType(params or {}), plugin=True, summary=summary)


def _change(
    verb: str, summary: str, undo: Undo, *, plugin: bool, params: dict[str, Param] | None = None
) -> VerbSpec:
    return VerbSpec(
        verb,
        MappingProxyType(params or {}),
        changes=True,
        group=Group.change,
        undo=undo,
        plugin=plugin,
        summary=summary,
    )


_TO = Param(str, required=True, resource=True)
_ALL = (
    _read("file.list", "list a folder"),
    _read("file.stat", "size, type and date of a file or folder"),
    _read("file.read", "read a file", {"max_bytes": Param(int), "offset": Param(int)}),
    _change(
        "file.mkdir",
        "make a folder",
        Undo.remove_dirs,
        plugin=True,
        params={"parents": Param(bool)},
    ),
    _change("file.copy", "copy a file", Undo.remove_created, plugin=False, params={"to": _TO}),
    _change("file.move", "move a file or folder", Undo.move_back, plugin=True, params={"to": _TO}),
    _change(
        "file.rename",
        "rename in place",
        Undo.move_back,
        plugin=False,
        params={"name": Param(str, required=True)},
    ),
    _change(
        "file.write",
        "write a new file",
        Undo.remove_created,
        plugin=True,
        params={
            "content": Param(str, required=True),
            "encoding": Param(str, choices=("utf-8", "base64")),
        },
    ),
    _change("file.delete", "delete a file or folder", Undo.restore, plugin=False),
    VerbSpec(
        "action.undo",
        MappingProxyType({"action_id": Param(str, required=True)}),
        changes=True,
        group=Group.change,
        undo=Undo.reverse,
        intent=False,
        summary="undo an earlier action",
    ),
    VerbSpec(
        "client.pair",
        group=Group.none,
        resource=ResourceKind.appliance,
        intent=False,
        summary="pair a desktop",
    ),
    VerbSpec(
        "net.request",
        group=Group.none,
        resource=ResourceKind.host,
        intent=False,
        summary="a plugin's web request",
    ),
    *(
        VerbSpec(
            f"view.{what}",
            group=Group.view,
            resource=ResourceKind.record,
            intent=False,
            summary=f"read {what} records through the API",
        )
        for what in ("plan", "task", "approval", "audit")
    ),
)

REGISTRY: MappingProxyType[str, VerbSpec] = MappingProxyType({v.name: v for v in _ALL})

UNDO_VERB = "action.undo"
PAIR_VERB = "client.pair"
NET_VERB = "net.request"  # an HTTP request a plugin asks the broker to make

# Derived sets, in registry order.
INTENT_VERBS: tuple[str, ...] = tuple(v.name for v in _ALL if v.intent)
READ_VERBS = frozenset(v.name for v in _ALL if v.intent and not v.changes)
WRITE_VERBS = frozenset(v.name for v in _ALL if v.intent and v.changes)
FILE_VERBS = frozenset(v.name for v in _ALL if v.resource is ResourceKind.file)
CHANGE_VERBS = frozenset(v.name for v in _ALL if v.changes)
KNOWN_VERBS = frozenset(REGISTRY)
PLUGIN_READ_OPS: tuple[str, ...] = tuple(v.name for v in _ALL if v.plugin and not v.changes)
PLUGIN_WRITE_OPS: tuple[str, ...] = tuple(v.name for v in _ALL if v.plugin and v.changes)
VIEW_VERBS = frozenset(v.name for v in _ALL if v.group is Group.view)
GROUPS: MappingProxyType[Group, frozenset[str]] = MappingProxyType(
    {
        g: frozenset(v.name for v in _ALL if v.group is g)
        for g in (Group.read, Group.change, Group.view)
    }
)


def spec(verb: str) -> VerbSpec:
    """The declaration of ``verb``; KeyError for a verb nobody declared."""
    return REGISTRY[verb]
