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

    def problems(self) -> str | None:
        """What makes this Batch unusable by the kernels, or None: the checks
        for rows built by hand (the readers build them right).  indptr must
        start at 0, never decrease and end at nnz; fields and features hold
        no negative id; the arrays agree in length.  The kernels index the
        model with these ids, so a negative one would read or write outside it."""
        n, nnz = self.n_rows, self.nnz
        ip = np.asarray(self.indptr)
        if ip.ndim != 1 or ip.shape[0] != n + 1:
            return f"indptr has {ip.shape[0] if ip.ndim == 1 else ip.shape} entries for {n} rows (needs {n + 1})"
        if ip[0] != 0 or ip[-1] != nnz:
            return f"indptr must start at 0 and end at the number of entries ({nnz}), not {int(ip[0])}..{int(ip[-1])}"
        if n and (np.diff(ip) < 0).any():
            return f"indptr decreases at row {int(np.flatnonzero(np.diff(ip) < 0)[0])}"
        if self.fields.shape[0] != nnz:
            return f"{self.fields.shape[0]} fields for {nnz} features"
        if self.values.shape[0] not in (0, nnz):
            return f"{self.values.shape[0]} values for {nnz} features"
        for name, a in (("feature", self.features), ("field", self.fields)):
            if nnz and int(a.min()) < 0:
                i = int(np.argmax(a < 0))
                return f"negative {name} id {int(a[i])} in row {int(np.searchsorted(ip, i, side='right')) - 1}"
        if self.weights is not None and self.weights.shape[0] != n:
            return f"{self.weights.shape[0]} weights for {n} rows"
        return None

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
