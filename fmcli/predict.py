"""Batch scoring with a loaded model, streaming over the input."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ._core import _kernels
from .data.batch import Batch
from .data.text import ReadLimits, TextReader
from .errors import DataError
from .metrics import auc, logloss_from_scores, sigmoid
from .model import Model


@dataclass
class Evaluation:
    rows: int
    logloss: float
    auc: float


class Scorer:
    """Scores batches with one model; the model's arrays are prepared once."""

    def __init__(self, model: Model, threads: int = 1):
        self.model = model
        self.threads = max(1, int(threads))
        self._bias, self._linear, self._factors, self._pairs, self._kp = model.kernel_arrays()

    def scores(self, batch: Batch) -> np.ndarray:
        """Raw scores (logits) of a batch."""
        s = self.model.spec
        out = np.empty(batch.n_rows, np.float64)
        _kernels.score_rows(
            s.kind, self._bias, self._linear, self._factors, self._pairs, s.n_features, s.n_fields,
            self._kp, 0, batch.indptr, batch.fields, batch.features, batch.values, out,
            s.use_bias, s.use_linear, s.normalize, self.threads,
        )
        return out


class UnseenIds:
    """Counts entries whose feature (or, for FFM, field) the model does not know.

    They add nothing to a score; with strict=True the first one is an error
    naming its file and line."""

    def __init__(self, model: Model, strict: bool = False):
        self.n_features = model.spec.n_features
        self.n_fields = model.spec.n_fields if model.spec.kind in ("ffm", "fwfm") else None
        self.strict = strict
        self.occurrences = 0
        self.rows = 0
        self.first: str | None = None

    def check(self, batch: Batch, name: str) -> None:
        outside = batch.features >= self.n_features
        if self.n_fields is not None:
            outside |= batch.fields >= self.n_fields
        count = int(np.count_nonzero(outside))
        if not count:
            return
        row_of = np.searchsorted(batch.indptr, np.flatnonzero(outside), side="right") - 1
        first = int(row_of[0])
        line = int(batch.lines[first]) if batch.lines is not None else None
        entry = int(np.flatnonzero(outside)[0])
        what = (f"feature {int(batch.features[entry])}"
                + (f" in field {int(batch.fields[entry])}" if self.n_fields is not None else "")
                + f" is outside the model ({self.n_features} features"
                + (f", {self.n_fields} fields" if self.n_fields is not None else "") + ")")
        if self.strict:
            raise DataError(what + " (--strict-ids)", name, line)
        if self.first is None:
            self.first = f"{name}:{line}" if line is not None else name
        self.occurrences += count
        self.rows += int(np.unique(row_of).size)


def iter_scores(
    model: Model,
    source: str | os.PathLike,
    *,
    fmt: str = "auto",
    threads: int = 1,
    limits: ReadLimits = ReadLimits(),
    unseen: UnseenIds | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (raw scores, labels as read) for each block of the input."""
    scorer = Scorer(model, threads)
    reader = TextReader(source, fmt=fmt, label_mode="real", limits=limits, track_lines=unseen is not None)
    for batch in reader:
        if unseen is not None:
            unseen.check(batch, reader.name)
        yield scorer.scores(batch), batch.labels


def predict(
    model: Model,
    source: str | os.PathLike | Batch,
    *,
    fmt: str = "auto",
    threads: int = 1,
) -> np.ndarray:
    """Probabilities for every row of a file or Batch."""
    if isinstance(source, Batch):
        return sigmoid(Scorer(model, threads).scores(source))
    parts = [sigmoid(s) for s, _ in iter_scores(model, source, fmt=fmt, threads=threads)]
    return np.concatenate(parts) if parts else np.zeros(0)


def evaluate(labels: np.ndarray, scores: np.ndarray) -> Evaluation | None:
    """Logloss and AUC of raw scores when the labels are binary (0/1 or -1/+1); else None."""
    if labels.size == 0 or not np.isin(labels, (-1.0, 0.0, 1.0)).all():
        return None
    return Evaluation(int(labels.size), logloss_from_scores(labels, scores), auc(labels, scores))


def format_probabilities(probs: np.ndarray) -> str:
    """One probability per line, 6 significant digits (libffm's output)."""
    if probs.size == 0:
        return ""
    return ("%.6g\n" * probs.size) % tuple(probs.tolist())
