"""Batch scoring with a loaded model, streaming over the input."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ._core import _kernels
from .data.batch import Batch
from .config import DEVICES
from .data.dataset import make_reader, prefetched
from .data.source import expand_inputs, reads_once
from .data.text import ReadLimits
from .errors import ConfigError, DataError
from .inputmap import INPUT_SCHEMAS, check_layout, scoring_options
from .metrics import evaluate as evaluate_metrics, sigmoid, softmax
from .model import Model
from .registry import kind as model_kind


@dataclass
class Evaluation:
    rows: int
    metrics: dict[str, float]   # fmcli.metrics.evaluate's, for the model's task


class Scorer:
    """Scores batches with one model; the model's arrays are prepared once."""

    def __init__(self, model: Model, threads: int = 1):
        self.model = model
        self.threads = max(1, int(threads))
        *self._arrays, kp = model.kernel_arrays()
        s = model.spec
        self._layout = _kernels.Layout(s.kind, s.task, s.n_classes, s.n_features, s.n_fields, kp, 0,
                                       use_bias=s.use_bias, use_linear=s.use_linear, normalize=s.normalize)

    def scores(self, batch: Batch) -> np.ndarray:
        """Raw scores of a batch: (n,), or (n, C) for a multiclass model."""
        s = self.model.spec
        out = np.empty(batch.n_rows * s.n_classes, np.float64)
        _kernels.score_rows(self._layout, *self._arrays, batch.indptr, batch.fields, batch.features,
                            batch.values, out, self.threads)
        return out.reshape(-1, s.n_classes) if s.task == "multiclass" else out


def make_scorer(model: Model, threads: int = 1, device: str = "cpu",
                log: Callable[[str], None] | None = None):
    """A Scorer on the CPU, or for device cuda / auto one on a CUDA device
    (fmcli.gpu, imported only then; auto falls back to the CPU, saying why)."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device != "cpu":
        from .gpu.device import resolve

        if resolve(device, log) == "cuda":
            from .gpu.state import GpuScorer

            return GpuScorer(model)
    return Scorer(model, threads)


def to_predictions(task: str, scores: np.ndarray) -> np.ndarray:
    """What a model predicts from raw scores: a probability (binary), C class
    probabilities (multiclass) or the value (regression)."""
    if task == "binary":
        return sigmoid(scores)
    if task == "multiclass":
        return softmax(scores)
    return scores


class UnseenIds:
    """Counts entries whose feature (or, for FFM, field) the model does not know.

    They add nothing to a score; with strict=True the first one is an error
    naming its file and line.  For a model with an id map (fmcli.data.idmap)
    the batch holds slots, and `original` the ids as read: an id without a
    slot is unseen."""

    def __init__(self, model: Model, strict: bool = False):
        self.n_features = model.spec.n_features
        self.mapped = model.feature_ids is not None
        self.n_fields = model.spec.n_fields if model_kind(model.spec.kind).needs_fields else None
        self.strict = strict
        self.occurrences = 0
        self.rows = 0
        self.first: str | None = None

    def check(self, batch: Batch, name: str, original: np.ndarray | None = None) -> None:
        if not batch.features.size or (int(batch.features.max()) < self.n_features and (
                self.n_fields is None or int(batch.fields.max()) < self.n_fields)):
            return      # (the maxima: one pass each, without the masks below)
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
        ids = batch.features if original is None else original
        what = (f"feature {int(ids[entry])}"
                + (f" in field {int(batch.fields[entry])}" if self.n_fields is not None else "")
                + (" is not one of the model's" if self.mapped and batch.features[entry] >= self.n_features
                   else " is outside the model")
                + f" ({self.n_features} features"
                + (f", {self.n_fields} fields" if self.n_fields is not None else "") + ")")
        if self.strict:
            raise DataError(what + " (--strict-ids)", name, line)
        if self.first is None:
            self.first = f"{name}:{line}" if line is not None else name
        self.occurrences += count
        self.rows += int(np.unique(row_of).size)


def iter_scores(
    model: Model,
    source: str | os.PathLike | list,
    *,
    fmt: str = "auto",
    threads: int = 1,
    limits: ReadLimits = ReadLimits(),
    unseen: UnseenIds | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    raw: bool | None = None,
    has_label: bool = True,
    input_schema: str = "model",
    allow_column_mismatch: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (raw scores, labels) for each block of the input.

    Labels are as read for binary and regression models, class indices for
    multiclass (a label that is not one of the model's classes is an error).
    device: cpu, cuda or auto (see :func:`make_scorer`).

    raw: the input is raw rows (e.g. Criteo TSV) to transform with the
    model's preprocessing spec (fm train --spec); None: decide per input
    (fmcli.data.criteo.looks_raw) when the model has a spec and `fmt` is
    auto.  has_label: raw rows without a header have a label column.

    Wide Parquet is read by the model's column map (fmcli.inputmap): by
    column name, a missing, extra or retyped column being an error, or with
    `allow_column_mismatch` a warning (to `warn`, default `log`).  Data of
    another layout than the model's training data (feature ids against wide
    columns) is an error unless `input_schema` is "any"."""
    if input_schema not in INPUT_SCHEMAS:
        raise ConfigError(f"input schema must be one of {', '.join(INPUT_SCHEMAS)}, got {input_schema!r}")
    warn = warn or log
    scorer = make_scorer(model, threads, device, log)
    spec = model.spec
    classes = list(spec.classes) if spec.task == "multiclass" else None
    # Parquet column options as in training, wide columns matched by name
    parquet = scoring_options(model, lenient=allow_column_mismatch, on_warning=warn)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    id_map = model.id_map()     # ids as read -> the model's slots (None: the same)
    pre = None
    if raw or (raw is None and fmt == "auto" and model.meta.get("spec")):
        from .data.criteo import model_spec

        pre = model_spec(model)
        if pre is None:
            raise ConfigError("raw input needs a model trained with a preprocessing spec "
                              "(fm convert ... then fm train --spec FILE)")
    for path in expand_inputs([os.fspath(s) for s in sources]):
        if pre is not None and (raw or _looks_raw(path, pre)):
            from .data.criteo import RawReader

            reader = RawReader(pre, [path], limits=limits, has_label=has_label)
        else:
            reader = make_reader(path, fmt, "class" if classes else "real", limits,
                                 track_lines=unseen is not None, classes=classes, parquet=parquet)
            check_layout(model, reader, input_schema, warn)
        yield from _score_input(model, scorer, reader, path, id_map, unseen, classes)


def _score_input(model: Model, scorer, reader, path: str, id_map, unseen: UnseenIds | None,
                 classes: list[str] | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """iter_scores for one input's reader."""
    # the next block is parsed in a background thread while this one is
    # scored (the parser and the kernels both run without the GIL)
    rows_before = 0     # rows of this input in the blocks before
    blocks = iter(reader)
    if reads_once(path):
        # A pipe or FIFO is opened (and its first block read) here, not in
        # the background thread: a signal must end a run that still waits
        # for the pipe's writer, and the thread cannot be interrupted.
        first = next(blocks, None)
        blocks = itertools.chain(() if first is None else (first,), blocks)
    for batch in prefetched(blocks):
        original = batch.features
        if id_map is not None:
            batch = with_slots(batch, id_map)
        if unseen is not None:
            unseen.check(batch, reader.name, original)
        scores = scorer.scores(batch)
        check_scores(model, scores, batch, reader.name, rows_before)
        rows_before += batch.n_rows
        labels = batch.labels
        if getattr(reader, "labelled", True) is False:   # raw rows without labels
            labels = np.full(batch.n_rows, np.nan, np.float32)
        elif classes is not None and reader.fmt == "raw":
            labels = _class_indices(labels, classes, batch, reader.name)
        yield scores, labels


def with_slots(batch: Batch, id_map) -> Batch:
    """`batch` with its feature ids replaced by slots of `id_map` (ids
    without one become len(id_map), which the kernels ignore)."""
    return Batch(batch.labels, batch.indptr, batch.fields, id_map.lookup(batch.features), batch.values,
                 batch.lines, batch.weights)


def check_scores(model: Model, scores: np.ndarray, batch: Batch, name: str | None, rows_before: int = 0) -> None:
    """Refuse a NaN or infinite score (DataError naming the row) rather than
    print it: finite weights can still overflow on a row's large values."""
    per_row = scores.reshape(batch.n_rows, -1)     # (n, C) for multiclass
    bad = ~np.isfinite(per_row)
    if not bad.any():
        return
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    value = float(per_row[row][bad[row]][0])
    line = int(batch.lines[row]) if batch.lines is not None else None
    shown = "NaN" if value != value else "+inf" if value > 0 else "-inf"
    what = f"the model {model.path}" if model.path else "the model"
    where = "this row" if line is not None else f"row {rows_before + row + 1}"
    raise DataError(f"{what} scores {where} {shown}, not a finite number "
                    "(its weights overflow on the row's values)", name, line)


def _class_indices(labels: np.ndarray, classes: list[str], batch: Batch, name: str) -> np.ndarray:
    """Raw rows' numeric labels as indices into a multiclass model's classes."""
    index: dict[float, int] = {}
    for i, c in enumerate(classes):
        try:
            index.setdefault(float(c), i)
        except ValueError:
            pass
    out = np.empty(labels.size, np.float32)
    for r, v in enumerate(labels.tolist()):
        if v not in index:
            line = int(batch.lines[r]) if batch.lines is not None else None
            raise DataError(f"label {v:g} is not one of the model's classes", name, line)
        out[r] = index[v]
    return out


def _looks_raw(path: str, spec) -> bool:
    from .data.criteo import looks_raw

    return looks_raw(path, spec)


def predict(
    model: Model,
    source: str | os.PathLike | Batch,
    *,
    fmt: str = "auto",
    threads: int = 1,
    device: str = "cpu",
    raw: bool | None = None,
) -> np.ndarray:
    """Predictions for every row of a file or Batch: probabilities (binary),
    an (n, C) matrix of class probabilities (multiclass) or values (regression)."""
    task = model.spec.task
    if isinstance(source, Batch):
        bad = source.problems()
        if bad:
            raise DataError(bad, "<batch>")
        id_map = model.id_map()
        scores = make_scorer(model, threads, device).scores(
            source if id_map is None else with_slots(source, id_map))
        check_scores(model, scores, source, None)
        return to_predictions(task, scores)
    parts = [to_predictions(task, s) for s, _ in iter_scores(model, source, fmt=fmt, threads=threads,
                                                             device=device, raw=raw)]
    if parts:
        return np.concatenate(parts)
    return np.zeros((0, model.spec.n_classes) if task == "multiclass" else 0)


def evaluate(task: str, labels: np.ndarray, scores: np.ndarray,
             weights: np.ndarray | None = None) -> Evaluation | None:
    """The task's metrics of raw scores; None when the labels cannot be
    scored (binary data whose labels are not 0/1 or -1/+1)."""
    if labels.size == 0:
        return None
    if task == "binary":
        if not np.isin(labels, (-1.0, 0.0, 1.0)).all():
            return None
        labels = (labels > 0).astype(np.float32)
    return Evaluation(int(labels.size), evaluate_metrics(task, labels, scores, weights))


class HeldUntilChecked:
    """A text output whose writes wait for a model file's background checks
    (fmcli.modelfile.PendingCheck): until they pass, what is written is
    kept here (at most `limit` characters, beyond which a write waits for
    them), then written in order.  flush() waits for them, writes the rest
    and flushes `out`; a failed check raises its error there or at a write."""

    def __init__(self, out, check, limit: int = 64 << 20):
        self.out, self.check, self.limit = out, check, limit
        self._held: list[str] | None = []
        self._size = 0

    def write(self, text: str) -> None:
        if self._held is not None:
            if not self.check.done() and self._size + len(text) <= self.limit:
                self._held.append(text)
                self._size += len(text)
                return
            self._release()
        self.out.write(text)

    def flush(self) -> None:
        self._release()
        self.out.flush()

    def _release(self) -> None:
        if self._held is None:
            return
        self.check.wait()
        held, self._held = self._held, None
        for text in held:
            self.out.write(text)


def format_predictions(task: str, preds: np.ndarray, classes: tuple[str, ...] | None = None,
                       top1: bool = False) -> str:
    """One line per row, 6 significant digits (libffm's output): the
    probability or value, or a multiclass row's C probabilities separated by
    spaces, or with top1 its most probable class label."""
    if preds.size == 0:
        return ""
    if task == "multiclass":
        if top1:
            names = np.asarray(classes, dtype=object)
            return "\n".join(names[np.argmax(preds, axis=1)].tolist()) + "\n"
        line = " ".join(["%.6g"] * preds.shape[1]) + "\n"
        return (line * preds.shape[0]) % tuple(preds.reshape(-1).tolist())
    return ("%.6g\n" * preds.size) % tuple(preds.tolist())


def format_probabilities(probs: np.ndarray) -> str:
    """One probability per line, 6 significant digits (libffm's output)."""
    return format_predictions("binary", probs)


class _CallableModule(__import__("types").ModuleType):
    """``fmcli.predict`` is the function even when this submodule was imported
    first (importing a submodule binds it as an attribute of the package)."""

    def __call__(self, *args, **kwargs):
        return predict(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
