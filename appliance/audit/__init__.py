"""The tamper-evident audit log: an RFC 9162 Merkle tree over append-only
entries, with checkpoints signed by the device key (see docs/audit.md)."""

from .log import AuditLog
from .merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from .verify import (
    CHECKPOINTS_FILE,
    ENTRIES_FILE,
    MAX_BATCH,
    AuditTampered,
    VerifyReport,
    checkpoint_payload,
    verify_log,
)

__all__ = [
    "CHECKPOINTS_FILE",
    "EMPTY_ROOT",
    "ENTRIES_FILE",
    "MAX_BATCH",
    "AuditLog",
    "AuditTampered",
    "MerkleTree",
    "VerifyReport",
    "checkpoint_payload",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
]
