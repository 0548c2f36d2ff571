"""Compact feature ids: parameters only for the ids that occur.

Hashed data (fm convert criteo, wide Parquet's hash_bits) spreads a few
thousand distinct features over millions of ids.  When the ids that occur
are sparse in their space, training gives each one a slot -- a compact id
0..n-1 -- and the model stores the original id of every slot (its
``feature_ids`` array, see fm-model(5)).  The data layer hands the kernels
slots instead of ids, so nothing below it knows; an id without a slot
becomes ``n`` (one past the last slot), which every kernel ignores like any
id outside its model.

The rule (:func:`is_sparse`): the ids are remapped when fewer than half of
the ids of their space (0 .. largest id) occur and the space holds at least
SPARSE_MIN_SPACE ids.  Dense data (nearly every id used) keeps its ids, and
its model file has no map.
"""

from __future__ import annotations

import numpy as np

SPARSE_MIN_SPACE = 1 << 16   # smaller id spaces are never remapped: their model is small anyway
SPARSE_MAX_SHARE = 0.5       # remap when fewer than this share of the space's ids occur
BITMAP_MAX_SPACE = 1 << 28   # occurrences are collected in a bit per id up to this space


def is_sparse(n_used: int, space: int) -> bool:
    """Whether `n_used` distinct ids out of `space` (largest id + 1) are worth remapping."""
    return space >= SPARSE_MIN_SPACE and n_used < SPARSE_MAX_SHARE * space


class Occurrences:
    """The distinct feature ids of a data set, collected chunk by chunk.

    Ids below BITMAP_MAX_SPACE set a flag in a growing boolean array (one
    byte per id: a single pass over the chunk, no sort); larger ids are kept
    as each chunk's unique ids, merged when asked."""

    def __init__(self) -> None:
        self._flags = np.zeros(0, np.bool_)
        self._large: list[np.ndarray] = []

    def add(self, features: np.ndarray, max_feature: int) -> None:
        if not features.shape[0]:
            return
        if max_feature < BITMAP_MAX_SPACE:
            if max_feature >= self._flags.shape[0]:
                grown = np.zeros(max(max_feature + 1, 2 * self._flags.shape[0]), np.bool_)
                grown[: self._flags.shape[0]] = self._flags
                self._flags = grown
            self._flags[features] = True
        else:
            self._large.append(np.unique(features))

    def ids(self) -> np.ndarray:
        """The distinct ids, sorted (int64)."""
        small = np.flatnonzero(self._flags)
        if not self._large:
            return small
        return np.unique(np.concatenate([small] + self._large))

    def count(self) -> int:
        if not self._large:
            return int(np.count_nonzero(self._flags))
        return int(self.ids().shape[0])


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.int32)


def _popcount_bytes(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 by a table per byte (numpy 1.x has no
    bitwise_count), a million words at a time to bound the temporaries."""
    words = np.ascontiguousarray(words, np.uint64)
    out = np.empty(words.shape[0], np.int32)
    for s in range(0, words.shape[0], 1 << 20):
        part = words[s : s + (1 << 20)]
        out[s : s + part.shape[0]] = _BYTE_BITS[part.view(np.uint8)].reshape(-1, 8).sum(axis=1)
    return out


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (int32)."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(words).astype(np.int32)
    return _popcount_bytes(words)


_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")    # numpy >= 2.0


class IdMap:
    """Original feature id -> slot.  `ids[slot]` is the original id of each
    slot, in slot order (sorted, except for ids a warm start appended)."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, np.int64).reshape(-1)
        self.ids = ids
        order = np.argsort(ids, kind="stable")
        self._sorted = np.ascontiguousarray(ids[order])
        if self._sorted.shape[0] > 1 and not (np.diff(self._sorted) > 0).all():
            raise ValueError("feature ids of an id map must be distinct")
        # slot of each sorted position; None while slots are in id order
        self._slot = None if (order == np.arange(order.shape[0])).all() else order.astype(np.int32)
        self._bits: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def space(self) -> int:
        """The id space the map came from: largest original id + 1."""
        return int(self.ids.max()) + 1 if self.ids.shape[0] else 0

    def _bitmap(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The rank bitmap of the sorted ids: a bit per id of the space in
        64-bit words, and the number of set bits before each word; None
        for spaces beyond BITMAP_MAX_SPACE (a binary search is used then)."""
        if self._bits is None and self.space <= BITMAP_MAX_SPACE:
            s = self._sorted
            words = np.zeros((self.space + 63) // 64, np.uint64)
            np.bitwise_or.at(words, s >> 6, np.left_shift(np.uint64(1), (s & 63).astype(np.uint64)))
            before = np.zeros(words.shape[0], np.int32)
            np.cumsum(_popcount(words[:-1]), out=before[1:])
            self._bits = (words, before)
        return self._bits

    def lookup(self, features: np.ndarray) -> np.ndarray:
        """Slots of `features` (int32); ids without a slot give len(self).

        A rank bitmap: an id's slot is the number of ids below it, which is
        the count before its word plus the set bits below it in the word --
        O(1) per id, about 20 ns.  A binary search in the sorted ids
        measured as fast for a thousand slots and 2 to 15 times slower from
        10^5 to 10^6 slots; it is used only for spaces beyond
        BITMAP_MAX_SPACE, where the bitmap (two bits per id) grows large."""
        n = len(self)
        features = np.asarray(features)
        if n == 0:
            return np.zeros(features.shape[0], np.int32)
        bits = self._bitmap()
        if bits is None:
            wide = features.astype(np.int64)
            pos = np.searchsorted(self._sorted, wide)
            np.minimum(pos, n - 1, out=pos)
            hit = self._sorted[pos] == wide
            rank = pos
        else:
            words, before = bits
            f = features.astype(np.int64)
            w = np.minimum(f >> 6, words.shape[0] - 1)
            b = (f & 63).astype(np.uint64)
            word = words[w]
            hit = ((word >> b) & np.uint64(1)).astype(np.bool_) & (f < self.space)
            rank = before[w] + _popcount(word & ((np.uint64(1) << b) - np.uint64(1)))
        slots = rank if self._slot is None else self._slot[np.minimum(rank, n - 1)]
        return np.where(hit, slots, n).astype(np.int32)

    def extended(self, ids: np.ndarray) -> "IdMap":
        """This map with the ids of `ids` it lacks appended (sorted) as new slots."""
        ids = np.unique(np.asarray(ids, np.int64))
        new = ids[~np.isin(ids, self._sorted, assume_unique=True)]
        return IdMap(np.concatenate([self.ids, new])) if new.shape[0] else self

    def original(self, slots: np.ndarray) -> np.ndarray:
        """Original ids of `slots` (each below len(self))."""
        return self.ids[np.asarray(slots, np.int64)]
