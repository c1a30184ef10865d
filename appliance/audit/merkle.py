"""An RFC 9162 (Certificate Transparency 2.0) Merkle tree, with proofs.

Hashes, as in RFC 9162 section 2.1.1::

    MTH({})       = SHA-256()
    leaf hash     = SHA-256(0x00 || leaf)
    node hash     = SHA-256(0x01 || left || right)
    MTH(D[n])     = node(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of two < n

The 0x00/0x01 prefixes keep a leaf from ever being passed off as an inner
node (second-preimage attacks on the tree).

:class:`MerkleTree` is append-only and keeps, for every level ``h``, the hash
of every *complete* aligned subtree of ``2**h`` leaves. Any subtree the RFC's
recursion asks for is either one of those (O(1)) or splits into one of those
plus a smaller right part, so a root of any past size, and every proof, costs
O(log n) hashes (proofs O(log^2 n) at worst), and an append costs O(1)
amortised. Hashes live in one ``bytearray`` per level (32 bytes a slot): about
64 bytes of memory a leaf in all, not a Python object per hash.

The proof generators and verifiers follow RFC 9162 sections 2.1.3 and 2.1.4
word for word; the tests check them against brute-force recomputation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    """SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class SegmentChanged(ValueError):
    """A sealed segment read back does not hash to the root kept for it."""


def root_from_peaks(peaks: Sequence[bytes]) -> bytes:
    """The RFC 9162 root of a tree given its peaks (``MerkleTree.peaks``):
    folded from the right."""
    if not peaks:
        return EMPTY_ROOT
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = node_hash(peak, root)
    return root


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only Merkle tree over leaf hashes, with cached complete subtrees.

    A tree over a segmented log (``segment`` leaves a segment, a power of
    two) can *prune* the segments that are sealed: their hashes below the
    segment's own root are dropped from memory, and brought back from
    ``loader(segment)`` (the segment's leaf hashes, checked against the root
    kept) only when a proof or a leaf inside them is asked for. Every root
    of a size at or past the sealed part, which is all a writer signs, needs
    only what is kept: O(log n) hashes per sealed segment in all.
    """

    def __init__(
        self,
        leaf_hashes: Iterable[bytes] = (),
        *,
        segment: int = 0,
        loader: Callable[[int], Sequence[bytes]] | None = None,
    ) -> None:
        # _levels[h] holds the hashes of the complete subtrees of 2**h leaves,
        # left to right, each HASH_SIZE bytes; below the segment's level, the
        # first _dropped[h] of them are pruned (sealed segments).
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        if segment and segment & (segment - 1):
            raise ValueError("a segment is a power of two leaves")
        self._seg = segment
        self._seg_level = segment.bit_length() - 1 if segment else 0
        self._sealed = 0  # segments pruned
        self._loader = loader
        self._loaded: dict[int, MerkleTree] = {}
        for h in leaf_hashes:
            self.append_hash(h)

    @classmethod
    def from_segments(
        cls, segment: int, roots: Sequence[bytes], loader: Callable[[int], Sequence[bytes]]
    ) -> MerkleTree:
        """A tree whose first ``len(roots)`` segments are sealed and pruned,
        known by their roots alone."""
        tree = cls(segment=segment, loader=loader)
        k = tree._seg_level
        tree._levels = [bytearray() for _ in range(k)]
        tree._levels.append(bytearray())
        for root in roots:
            tree._levels[k] += root
            tree._size += segment
            level, count = k, tree._size >> k
            while count % 2 == 0:
                tree._carry(level)
                level += 1
                count //= 2
        tree._sealed = len(roots)
        return tree

    @property
    def size(self) -> int:
        return self._size

    @property
    def sealed(self) -> int:
        """Leaves in pruned (sealed) segments."""
        return self._sealed * self._seg

    def _slot(self, level: int, index: int) -> bytes:
        if level < self._seg_level:
            index -= self._sealed * (self._seg >> level)
            if index < 0:
                raise IndexError("pruned")
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _carry(self, level: int) -> None:
        below = self._levels[level]
        pair = below[-2 * HASH_SIZE :]
        if level + 1 == len(self._levels):
            self._levels.append(bytearray())
        self._levels[level + 1] += node_hash(bytes(pair[:HASH_SIZE]), bytes(pair[HASH_SIZE:]))

    def append_hash(self, h: bytes) -> int:
        """Add a leaf given its leaf hash; returns its index."""
        if len(h) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        index = self._size
        self._levels[0] += h
        self._size += 1
        # Every time a level gets an even count, its last two slots complete a
        # subtree one level up: carry it, like incrementing a binary counter.
        level = 0
        count = self._size
        while count % 2 == 0:
            self._carry(level)
            level += 1
            count //= 2
        return index

    def append(self, leaf: bytes) -> int:
        """Add a leaf given its bytes; returns its index."""
        return self.append_hash(leaf_hash(leaf))

    def prune(self) -> None:
        """Drop from memory the hashes below the root of every complete segment."""
        if not self._seg:
            return
        full = self._size // self._seg
        for level in range(self._seg_level):
            drop = (full - self._sealed) * (self._seg >> level) * HASH_SIZE
            del self._levels[level][:drop]
        self._sealed = full
        self._loaded.clear()

    def truncate(self, size: int) -> None:
        """Forget every leaf from ``size`` on (undoing appends that never became durable)."""
        self._check_size(size)
        if size < self.sealed:
            raise ValueError("cannot truncate into a sealed segment")
        for level, hashes in enumerate(self._levels):
            keep = size >> level
            if level < self._seg_level:
                keep -= self._sealed * (self._seg >> level)
            del hashes[keep * HASH_SIZE :]
        self._size = size

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if not 0 <= index < self._size:
            raise IndexError(index)
        if index < self.sealed:
            seg = index // self._seg
            return self._segment_tree(seg).leaf(index - seg * self._seg)
        return self._slot(0, index)

    def segment_root(self, seg: int) -> bytes:
        """The root of complete segment ``seg`` (kept even when pruned)."""
        if (seg + 1) * self._seg > self._size:
            raise ValueError(f"segment {seg} is not complete")
        return self._slot(self._seg_level, seg)

    def _segment_tree(self, seg: int) -> MerkleTree:
        """A sealed segment's own tree, loaded and checked against its root."""
        tree = self._loaded.get(seg)
        if tree is None:
            if self._loader is None:
                raise ValueError(f"segment {seg} is pruned and nothing can load it")
            tree = MerkleTree(self._loader(seg))
            if tree.size != self._seg or tree.root() != self._slot(self._seg_level, seg):
                raise SegmentChanged(f"segment {seg} does not match its root any more")
            if len(self._loaded) >= 2:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[seg] = tree
        return tree

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges RFC 9162's recursion produces.

        Those ranges always start on a multiple of a power of two at least as
        large as the range, so the left part of every split is a complete,
        cached subtree and only the right part recurses (depth <= log n). A
        range smaller than a segment lies inside one segment: a sealed one
        is loaded to answer it.
        """
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if start < self.sealed and n < self._seg:
            seg = start // self._seg
            base = seg * self._seg
            return self._segment_tree(seg)._subtree(start - base, end - base)
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            return self._slot(level, start >> level)
        k = _split(n)
        return node_hash(self._subtree(start, start + k), self._subtree(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first ``size`` leaves (default: all)."""
        size = self._size if size is None else size
        self._check_size(size)
        return self._subtree(0, size)

    def peaks(self, size: int | None = None) -> list[bytes]:
        """The roots of the complete subtrees the first ``size`` leaves split
        into (the binary digits of ``size``, largest first)."""
        size = self._size if size is None else size
        self._check_size(size)
        out, start = [], 0
        for bit in reversed(range(size.bit_length())):
            if size >> bit & 1:
                out.append(self._subtree(start, start + (1 << bit)))
                start += 1 << bit
        return out

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise ValueError(f"tree size {size} is outside 0..{self._size}")

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 section 2.1.3.1."""
        size = self._size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        return self._path(index, 0, size)

    def _path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return self._path(m, start, start + k) + [self._subtree(start + k, end)]
        return self._path(m - k, start + k, end) + [self._subtree(start, start + k)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1.

        Empty when ``old_size`` is 0 or equals ``new_size``: there is nothing
        to prove then beyond comparing roots.
        """
        new_size = self._size if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} is outside 0..{new_size}")
        if old_size in (0, new_size):
            return []
        return self._subproof(old_size, 0, new_size, True)

    def _subproof(self, m: int, start: int, end: int, b: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if b else [self._subtree(start, end)]
        k = _split(n)
        if m <= k:
            return self._subproof(m, start, start + k, b) + [self._subtree(start + k, end)]
        return self._subproof(m - k, start + k, end, False) + [self._subtree(start, start + k)]


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes (convenience over :class:`MerkleTree`)."""
    return MerkleTree(leaf_hashes).root()


def verify_inclusion(
    leaf_hash_: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: is ``leaf_hash_`` leaf ``index`` of the tree with ``root``?"""
    if not 0 <= index < tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = leaf_hash_
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: is the tree (new_size, new_root) an append-only
    extension of (old_size, old_root)?"""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        # Same tree: nothing to prove, the roots must simply agree.
        return not proof and old_root == new_root
    if old_size == 0:
        # Every tree extends the empty one.
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
