"""Checking an audit log end to end with nothing but the device's public key.

The same checks run in two places: :func:`verify_log` (``appliance audit
verify``, a desktop, an auditor with a copy of the directory) and
:class:`~appliance.audit.log.AuditLog` when it opens a log, so the broker
refuses to run on a log that does not verify (fail closed).

What the checks prove is written in docs/audit.md; in short: every entry up
to the last signed checkpoint is exactly what the device key signed over, in
that order, and (given a checkpoint saved earlier elsewhere) the log still
extends it. What they cannot prove locally is that nobody cut off the newest
entries *and* the newest checkpoints together: only a checkpoint kept outside
the box (a desktop's) or a monotonic counter (the TPM's) can.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import ApplianceError
from appliance.intents import canonical_json
from appliance.issuer.keys import UNSAFE_LABEL, Signer, key_id

from .merkle import MerkleTree, leaf_hash, verify_consistency

ENTRIES_FILE = "entries.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"

# The most entries one group commit writes. A crash between the entries'
# fsync and the checkpoint's can leave at most this many entries unsigned, so
# more than this past the last checkpoint means someone wrote them behind the
# broker's back.
MAX_BATCH = 256

# Past this many problems of one kind, say how many more instead of listing.
_MAX_LISTED = 10

ENTRY_FIELDS = frozenset({"index", "time", "kind", "data"})
# boot_count: the TPM's boot counter (an NV counter bumped at every start)
# when the checkpoint was signed, so a log rolled back across starts shows.
SESSION_KIND = "audit.session"
CHECKPOINT_FIELDS = frozenset(
    {"tree_size", "root_hash", "time", "key_id", "signer", "boot_count", "signature"}
)


class AuditTampered(ApplianceError):
    """The audit log does not verify against its signed checkpoints: fail closed."""

    status = 503
    code = "audit_tampered"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_log`.

    ``problems`` are tampering (``ok`` is false when there is any); ``warnings``
    are states a crash leaves behind, which the broker repairs at its next
    start (a torn last line, the last batch not yet checkpointed).
    ``unsafe_signer`` says a development key (plain files, not a TPM) signed.
    """

    ok: bool
    entries: int
    checkpoints: int
    problems: list[str]
    unsafe_signer: bool
    warnings: list[str] = field(default_factory=list)


def checkpoint_payload(checkpoint: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: every field but the signature."""
    return canonical_json({k: checkpoint[k] for k in CHECKPOINT_FIELDS - {"signature"}})


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their newline) and the torn bytes after the last one.

    Only ``\\n`` ends a line: canonical JSON escapes it inside strings, while
    other Unicode line breaks (U+2028...) may appear raw and must not split.
    """
    cut = data.rfind(b"\n") + 1
    body, torn = data[:cut], data[cut:]
    return (body.split(b"\n")[:-1] if body else []), torn


def _capped(items: list[str], what: str) -> list[str]:
    if len(items) <= _MAX_LISTED:
        return items
    return items[:_MAX_LISTED] + [f"... and {len(items) - _MAX_LISTED} more {what}."]


def _span(a: int, b: int) -> str:
    return f"entry {a}" if a == b else f"entries {a}..{b}"


def _are(a: int, b: int) -> str:
    return "is" if a == b else "are"


@dataclass
class _Checkpoint:
    line: int  # 1-based line in checkpoints.jsonl
    size: int
    root: bytes
    signer: str
    signed: bool  # the signature was checked and holds


@dataclass
class CheckResult:
    problems: list[str]
    warnings: list[str]
    tree: MerkleTree
    checkpoints: list[_Checkpoint]  # structurally valid ones, in file order
    unsafe_signer: bool

    @property
    def last_signed_size(self) -> int:
        """The tree size the newest good checkpoint covers (0 if none)."""
        return max((c.size for c in self.checkpoints), default=0)


def _load_public_key(public_key_pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ApplianceError("the audit public key is not an ECDSA key")
    return key


def _signature_ok(key: ec.EllipticCurvePublicKey, checkpoint: dict[str, Any]) -> bool:
    try:
        sig = base64.b64decode(checkpoint["signature"], validate=True)
        key.verify(sig, checkpoint_payload(checkpoint), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _parse_checkpoint(raw: bytes | dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A checkpoint dict, or None and why not."""
    if isinstance(raw, dict):
        cp = raw
    else:
        try:
            cp = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, "is not valid JSON"
    if not isinstance(cp, dict):
        return None, "is not a JSON object"
    if set(cp) != CHECKPOINT_FIELDS:
        return None, f"has fields {sorted(cp)}, expected {sorted(CHECKPOINT_FIELDS)}"
    size, root = cp["tree_size"], cp["root_hash"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None, "has a tree_size that is not a whole number"
    if not isinstance(root, str) or len(root) != 64:
        return None, "has a root_hash that is not 64 hex digits"
    try:
        bytes.fromhex(root)
    except ValueError:
        return None, "has a root_hash that is not 64 hex digits"
    if not all(isinstance(cp[k], str) for k in ("time", "key_id", "signer", "signature")):
        return None, "has a time, key_id, signer or signature that is not a string"
    boot = cp["boot_count"]
    if not isinstance(boot, int) or isinstance(boot, bool) or boot < 0:
        return None, "has a boot_count that is not a whole number"
    return cp, ""


# Keys whose checkpoints count: key id -> (key, the entry that vouched for it;
# -1 for the device key). A session key may sign trees that include its entry.
_Keys = dict[str, tuple[ec.EllipticCurvePublicKey, int]]


def check_log(
    entry_lines: list[bytes],
    checkpoint_lines: list[bytes],
    public_key_pem: bytes,
    *,
    trusted_checkpoint: dict[str, Any] | None = None,
    all_signatures: bool = True,
) -> CheckResult:
    """Check entries against checkpoints; the core of :func:`verify_log`.

    ``all_signatures=False`` checks only the newest checkpoint's signature
    (what the broker does at open, so start-up stays fast on a long log):
    that one root commits to every entry before it. Older checkpoints are
    then only checked for form, key id and order; when something is wrong,
    run again with ``all_signatures=True`` to say where.
    """
    keys: _Keys = {key_id(public_key_pem): (_load_public_key(public_key_pem), -1)}
    tree, problems = _check_entries(entry_lines, public_key_pem, keys)
    checkpoints, found, unsafe = _check_checkpoints(
        checkpoint_lines, keys, key_id(public_key_pem), all_signatures
    )
    problems += found
    problems += _check_roots(checkpoints, tree)
    top = max(checkpoints, key=lambda c: c.size, default=None)
    if top is not None and top.size > tree.size:
        n = tree.size
        problems.append(
            f"The log holds {n} entries but the checkpoint on line {top.line} was signed over "
            f"{top.size}: {_span(n, top.size - 1)} {_are(n, top.size - 1)} missing "
            "(the log was truncated)."
        )
    found, warnings = _check_unsigned(tree.size, top, bool(checkpoint_lines))
    problems += found
    # A checkpoint saved earlier outside the box: the log must extend it.
    if trusted_checkpoint is not None:
        problems += _check_trusted(trusted_checkpoint, keys, tree, top)
    return CheckResult(problems, warnings, tree, checkpoints, unsafe)


def _check_entries(
    entry_lines: list[bytes], public_key_pem: bytes, keys: _Keys
) -> tuple[MerkleTree, list[str]]:
    """Each line a JSON object whose index is its position; the tree of them.
    Session keys the device key vouched for are added to ``keys``."""
    tree = MerkleTree()
    sequence: list[str] = []
    for pos, line in enumerate(entry_lines):
        tree.append_hash(leaf_hash(line))
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            sequence.append(
                f"Line {pos + 1}, where entry {pos} belongs, is not valid JSON (damaged or forged)."
            )
            continue
        if not isinstance(entry, dict) or set(entry) != ENTRY_FIELDS:
            sequence.append(
                f"Line {pos + 1}, where entry {pos} belongs, is not an audit entry (wrong fields)."
            )
            continue
        if entry["index"] != pos:
            sequence.append(
                f"Line {pos + 1}, where entry {pos} belongs, holds an entry with index "
                f"{entry['index']!r}: entries are out of sequence (reordered, inserted or deleted)."
            )
        if entry["kind"] == SESSION_KIND:
            session = session_key(entry["data"], public_key_pem)
            if session is None:
                sequence.append(
                    f"Entry {pos} names an audit session key that the device key did not "
                    "vouch for (forged)."
                )
            else:
                keys.setdefault(session[0], (session[1], pos))
    return tree, _capped(sequence, "entries out of sequence or damaged")


def _check_checkpoints(
    checkpoint_lines: list[bytes], keys: _Keys, device_kid: str, all_signatures: bool
) -> tuple[list[_Checkpoint], list[str], bool]:
    """Well formed, signed by a key that counts, sizes and boot counts never
    going back. Returns the good ones, the problems, and whether a
    development key signed."""
    problems: list[str] = []
    checkpoints: list[_Checkpoint] = []
    last_line = len(checkpoint_lines)
    unsafe = False
    high = boot_high = 0
    for i, raw in enumerate(checkpoint_lines, start=1):
        cp, why = _parse_checkpoint(raw)
        if cp is None:
            problems.append(f"The checkpoint on line {i} {why}.")
            continue
        cp_key = _key_for(keys, cp)
        if cp_key is None:
            problems.append(
                f"The checkpoint on line {i} (tree size {cp['tree_size']}) names key "
                f"{cp['key_id']!r}, neither the device key {device_kid!r} nor a session key "
                "it vouched for."
            )
            continue
        signed = all_signatures or i == last_line
        if signed and not _signature_ok(cp_key, cp):
            problems.append(
                f"The checkpoint on line {i} (tree size {cp['tree_size']}) has a signature "
                "that does not verify with the device's public key (forged or altered)."
            )
            continue
        unsafe = unsafe or cp["signer"] == UNSAFE_LABEL
        if cp["tree_size"] < high:
            problems.append(
                f"The checkpoint on line {i} has tree size {cp['tree_size']}, smaller than the "
                f"{high} of an earlier checkpoint: checkpoints went backwards."
            )
        high = max(high, cp["tree_size"])
        if cp["boot_count"] < boot_high:
            problems.append(
                f"The checkpoint on line {i} has boot count {cp['boot_count']}, smaller than the "
                f"{boot_high} of an earlier checkpoint: the boot counter went backwards."
            )
        boot_high = max(boot_high, cp["boot_count"])
        checkpoints.append(
            _Checkpoint(i, cp["tree_size"], bytes.fromhex(cp["root_hash"]), cp["signer"], signed)
        )
    return checkpoints, problems, unsafe


def _check_roots(checkpoints: list[_Checkpoint], tree: MerkleTree) -> list[str]:
    """Each signed checkpoint's root against the entries. The first mismatch
    pins the change between the last checkpoint that still matches and it."""
    good_sizes = [0]
    mismatches: list[tuple[_Checkpoint, int]] = []
    for cp in checkpoints:
        # An unchecked signature proves nothing, so neither does its root.
        if cp.size > tree.size or not cp.signed:
            continue
        if tree.root(cp.size) == cp.root:
            good_sizes.append(cp.size)
        else:
            below = max(s for s in good_sizes if s < cp.size) if cp.size else 0
            mismatches.append((cp, below))
    if not mismatches:
        return []
    cp, below = mismatches[0]
    span = _span(below, cp.size - 1)
    what = (
        "it was edited or replaced"
        if below == cp.size - 1
        else "one of them was edited, inserted, deleted or moved"
    )
    problems = [
        f"{span[0].upper()}{span[1:]} do{'es' if below == cp.size - 1 else ''} not match the "
        f"checkpoint on line {cp.line} (tree size {cp.size}), while the first {below} "
        f"entries do: {what}."
    ]
    if len(mismatches) > 1:
        problems.append(f"{len(mismatches) - 1} later checkpoints do not match either.")
    return problems


def _check_unsigned(
    n: int, top: _Checkpoint | None, has_checkpoints: bool
) -> tuple[list[str], list[str]]:
    """Entries no checkpoint covers (problems, warnings). A new log signs a
    checkpoint of size 0 before its first entry, and a crash leaves at most
    one batch unsigned."""
    signed_size = top.size if top is not None else 0
    if n <= signed_size:
        return [], []
    tail = n - signed_size
    span = _span(signed_size, n - 1)
    if top is None and not has_checkpoints:
        return [
            f"The log holds {n} entries but no checkpoint at all: the checkpoints were "
            "deleted, so nothing proves a single entry."
        ], []
    if tail > MAX_BATCH:
        return [
            f"{span[0].upper()}{span[1:]} ({tail} entries) are covered by no signed "
            f"checkpoint; a crash leaves at most {MAX_BATCH} unsigned, so they were added "
            "behind the broker's back."
        ], []
    return [], [
        f"{span[0].upper()}{span[1:]} {_are(signed_size, n - 1)} not yet covered by a "
        f"signed checkpoint, so nothing proves {'it' if tail == 1 else 'them'} yet: a "
        "crash between the two fsyncs of a batch, or a write in flight. The broker "
        "signs them at its next start and records that it did."
    ]


def _key_for(keys: _Keys, cp: dict[str, Any]) -> ec.EllipticCurvePublicKey | None:
    """The key a checkpoint names, if it may sign a tree of that size."""
    found = keys.get(cp["key_id"])
    if found is None or found[1] >= cp["tree_size"]:
        return None
    return found[0]


def session_statement(device: Signer, session: Signer, *, boot_count: int) -> dict[str, Any]:
    """The device key vouches for this start's in-memory checkpoint key.

    Signing each checkpoint in a TPM would put the TPM (100-600 ms per
    signature on an SPI chip) on every request; instead the device key signs
    this once per start, and the session key signs the checkpoints."""
    body = {
        "audit_key_pem": session.public_key_pem().decode(),
        "key_id": session.key_id,
        "device_key_id": device.key_id,
        "boot_count": boot_count,
    }
    signature = base64.b64encode(device.sign(canonical_json(body))).decode()
    return {**body, "signature": signature}


def session_key(
    data: dict[str, Any], device_public_pem: bytes
) -> tuple[str, ec.EllipticCurvePublicKey] | None:
    """(key id, key) of a session statement the device key signed, else None."""
    try:
        body = {k: data[k] for k in ("audit_key_pem", "key_id", "device_key_id", "boot_count")}
        signature = base64.b64decode(data["signature"], validate=True)
        pem = body["audit_key_pem"].encode()
        if key_id(pem) != body["key_id"] or body["device_key_id"] != key_id(device_public_pem):
            return None
        device = _load_public_key(device_public_pem)
        device.verify(signature, canonical_json(body), ec.ECDSA(hashes.SHA256()))
        return body["key_id"], _load_public_key(pem)
    except (KeyError, TypeError, AttributeError, ValueError, InvalidSignature, ApplianceError):
        return None


def _check_trusted(
    trusted: dict[str, Any],
    keys: _Keys,
    tree: MerkleTree,
    top: _Checkpoint | None,
) -> list[str]:
    cp, why = _parse_checkpoint(trusted)
    if cp is None:
        return [f"The trusted checkpoint {why}."]
    key = _key_for(keys, cp)
    if key is None or not _signature_ok(key, cp):
        return ["The trusted checkpoint is not signed by the device key; it proves nothing."]
    size, root, n = cp["tree_size"], bytes.fromhex(cp["root_hash"]), tree.size
    if size > n:
        return [
            f"The trusted checkpoint covers {size} entries but the log holds only {n}: "
            f"{_span(n, size - 1)} {_are(n, size - 1)} gone (the log was rolled back)."
        ]
    if tree.root(size) != root:
        return [
            f"Entries 0..{size - 1} do not match the trusted checkpoint of tree size {size}: "
            "the log was forked or rewritten since that checkpoint was saved."
        ]
    out = []
    if top is None or top.size < size:
        have = top.size if top is not None else 0
        out.append(
            f"The trusted checkpoint covers {size} entries but the log's own signed checkpoints "
            f"stop at {have}: checkpoints after entry {have - 1 if have else 0} were removed "
            "(rolled back)."
        )
    else:
        # What a desktop does remotely: ask for a consistency proof from its
        # saved checkpoint to the newest one and check it.
        proof = tree.consistency_proof(size, top.size)
        if not verify_consistency(size, top.size, root, top.root, proof):
            out.append(
                f"The log's newest checkpoint (tree size {top.size}) is not consistent with the "
                f"trusted checkpoint of tree size {size}: the log was forked."
            )
    return out


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def verify_log(
    directory: Path,
    public_key_pem: bytes,
    *,
    trusted_checkpoint: dict[str, Any] | None = None,
) -> VerifyReport:
    """Check the audit log in ``directory`` with the device's public key alone.

    Reads the files and writes nothing, so it is safe on a copy, on a card
    taken out of the box, or beside a running broker (an append in flight
    shows up as a warning, not a problem).
    """
    # Checkpoints first: beside a running broker, entries only grow after a
    # checkpoint is read, never the other way round (which would look like
    # a truncation).
    cp_lines, cp_torn = split_lines(_read(directory / CHECKPOINTS_FILE))
    entry_lines, torn = split_lines(_read(directory / ENTRIES_FILE))
    result = check_log(entry_lines, cp_lines, public_key_pem, trusted_checkpoint=trusted_checkpoint)
    warnings = list(result.warnings)
    if torn:
        warnings.append(
            f"{ENTRIES_FILE} ends in {len(torn)} bytes without a newline (a crash mid-write, "
            f"or a write in flight); they are not entry {len(entry_lines)} yet and the broker "
            "cuts them at its next start."
        )
    if cp_torn:
        warnings.append(
            f"{CHECKPOINTS_FILE} ends in {len(cp_torn)} bytes without a newline (a crash "
            "mid-write); the broker cuts them at its next start."
        )
    return VerifyReport(
        ok=not result.problems,
        entries=len(entry_lines),
        checkpoints=len(cp_lines),
        problems=result.problems,
        unsafe_signer=result.unsafe_signer,
        warnings=warnings,
    )
