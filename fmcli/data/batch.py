"""Batch: a chunk of rows in CSR form, the one currency between readers and backends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    """Rows in compressed sparse row form.

    Row ``r`` owns entries ``indptr[r]:indptr[r+1]`` of ``fields``,
    ``features`` and ``values``.  Labels are as read from the file; for the
    binary task the loader maps them to -1/+1.  ``weights`` holds per-row
    sample weights, or is None when every row weighs 1.
    """

    labels: np.ndarray      # float32 (n_rows,)
    indptr: np.ndarray      # int64 (n_rows + 1,)
    fields: np.ndarray      # int32 (nnz,)
    features: np.ndarray    # int32 (nnz,)
    values: np.ndarray      # float32 (nnz,)
    lines: np.ndarray | None = None   # int64 (n_rows,): 1-based line of each row, when tracked
    weights: np.ndarray | None = None  # float32 (n_rows,): row weights; None: all 1

    @property
    def n_rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.features.shape[0])

    @property
    def max_feature(self) -> int:
        return int(self.features.max()) if self.nnz else -1

    @property
    def max_field(self) -> int:
        return int(self.fields.max()) if self.nnz else -1

    def rows(self, start: int, stop: int) -> "Batch":
        """Rows start..stop-1 (views; indptr rebased to 0)."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return Batch(
            labels=self.labels[start:stop],
            indptr=self.indptr[start : stop + 1] - lo,
            fields=self.fields[lo:hi],
            features=self.features[lo:hi],
            values=self.values[lo:hi],
            lines=None if self.lines is None else self.lines[start:stop],
            weights=None if self.weights is None else self.weights[start:stop],
        )

    @classmethod
    def empty(cls) -> "Batch":
        return cls(
            labels=np.zeros(0, np.float32),
            indptr=np.zeros(1, np.int64),
            fields=np.zeros(0, np.int32),
            features=np.zeros(0, np.int32),
            values=np.zeros(0, np.float32),
        )

    @classmethod
    def concat(cls, batches: list["Batch"]) -> "Batch":
        """Join batches into one; the inputs may be released afterwards."""
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        offsets = np.cumsum([0] + [b.nnz for b in batches[:-1]])
        indptr = np.concatenate(
            [np.zeros(1, np.int64)] + [b.indptr[1:] + off for b, off in zip(batches, offsets)]
        )
        weights = None
        if any(b.weights is not None for b in batches):
            weights = np.concatenate([
                np.ones(b.n_rows, np.float32) if b.weights is None else b.weights for b in batches
            ]).astype(np.float32, copy=False)
        return cls(
            labels=np.concatenate([b.labels for b in batches]),
            indptr=indptr,
            fields=np.concatenate([b.fields for b in batches]),
            features=np.concatenate([b.features for b in batches]),
            values=np.concatenate([b.values for b in batches]),
            weights=weights,
        )
