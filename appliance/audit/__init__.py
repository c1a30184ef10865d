"""The tamper-evident audit log: an RFC 9162 Merkle tree over append-only
entries stored in segments, with checkpoints signed by the device key (see
docs/audit.md)."""

from .checkpoints import AuditTampered, checkpoint_payload
from .log import AuditLog
from .merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_from_peaks,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from .reading import verify_log
from .segments import INDEX_FILE, SEGMENT_ENTRIES, checkpoints_name, entries_name
from .verify import MAX_BATCH, VerifyReport

__all__ = [
    "EMPTY_ROOT",
    "INDEX_FILE",
    "MAX_BATCH",
    "SEGMENT_ENTRIES",
    "AuditLog",
    "AuditTampered",
    "MerkleTree",
    "VerifyReport",
    "checkpoint_payload",
    "checkpoints_name",
    "entries_name",
    "leaf_hash",
    "node_hash",
    "root_from_peaks",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
]
