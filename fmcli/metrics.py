"""Evaluation metrics on NumPy arrays (shared by training, prediction and tests).

Plain NumPy on purpose: importing scipy.stats / scipy.special costs over a
second at start-up, which every `fm predict` in a shell pipeline would pay.

Conventions:

* Binary labels: anything > 0 is positive, so 0/1 and -1/+1 both work.
* Multiclass labels: integer class indices 0..C-1; probabilities and scores
  are (n, C) matrices.
* Every metric takes an optional ``weight``: non-negative per-row weights
  (None = all ones).  Weighted means are sum(w * x) / sum(w).
* Empty input, or a total weight of zero, gives NaN.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "DEFAULT_METRIC",
    "METRICS",
    "METRIC_NAMES",
    "accuracy",
    "auc",
    "average_ranks",
    "calibration_bins",
    "defined",
    "evaluate",
    "expected_calibration_error",
    "is_better",
    "logloss",
    "logloss_from_scores",
    "mae",
    "multiclass_logloss",
    "multiclass_logloss_from_scores",
    "normalized_entropy",
    "rmse",
    "sigmoid",
    "softmax",
    "why_undefined",
]

_NAN = float("nan")

# name -> (tasks where the metric exists, higher is better)
METRICS: dict[str, tuple[tuple[str, ...], bool]] = {
    "logloss": (("binary", "multiclass"), False),
    "auc": (("binary",), True),
    "ne": (("binary",), False),
    "ece": (("binary",), False),
    "rmse": (("regression",), False),
    "mae": (("regression",), False),
    "accuracy": (("multiclass",), True),
}

# The metric that selects the best epoch when none is named.
DEFAULT_METRIC: dict[str, str] = {"binary": "logloss", "regression": "rmse", "multiclass": "logloss"}

_TASKS = ("binary", "regression", "multiclass")


# ----------------------------------------------------------------- helpers

def _vector(x) -> np.ndarray:
    """`x` as a flat float64 array."""
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _weights(weight, n: int) -> np.ndarray | None:
    """Validated float64 weights of length n, or None for unit weights."""
    if weight is None:
        return None
    w = np.asarray(weight, dtype=np.float64).reshape(-1)
    if w.size != n:
        raise ValueError(f"weight has {w.size} entries for {n} rows")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    return w


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a.shape[0]} labels for {b.shape[0]} predictions")


def _wmean(x: np.ndarray, w: np.ndarray | None) -> float:
    """Weighted mean sum(w*x)/sum(w); NaN when empty or sum(w) == 0."""
    if x.size == 0:
        return _NAN
    if w is None:
        return float(np.mean(x))
    total = float(w.sum())
    if total <= 0.0:
        return _NAN
    return float(np.dot(w, x) / total)


def _binary(labels, preds) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 float labels, float predictions), both flat and of equal length."""
    y = (np.asarray(labels).reshape(-1) > 0).astype(np.float64)
    p = _vector(preds)
    _same_length(y, p)
    return y, p


def _entropy(rate: float) -> float:
    """Binary entropy in nats of a base rate; NaN unless 0 < rate < 1."""
    if not 0.0 < rate < 1.0:
        return _NAN
    return -(rate * math.log(rate) + (1.0 - rate) * math.log1p(-rate))


def _class_indices(labels, n_classes: int) -> np.ndarray:
    """Labels as int64 class indices, checked to be integral and in 0..C-1."""
    lab = np.asarray(labels).reshape(-1)
    if lab.dtype.kind not in "iu":
        f = lab.astype(np.float64)
        if not np.all(f == np.round(f)):
            raise ValueError("multiclass labels must be integer class indices")
        lab = f
    idx = lab.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_classes):
        raise ValueError(f"class labels must lie in 0..{n_classes - 1}")
    return idx


def _matrix(x, n: int) -> np.ndarray:
    """`x` as an (n, C) float64 matrix; empty input becomes (0, 0)."""
    m = np.asarray(x, dtype=np.float64)
    if m.size == 0 and n == 0:
        return m.reshape(0, m.shape[-1] if m.ndim == 2 else 0)
    if m.ndim != 2:
        raise ValueError(f"expected an (n, C) matrix, got shape {m.shape}")
    if m.shape[0] != n:
        raise ValueError(f"{n} labels for {m.shape[0]} rows of predictions")
    return m


def _logsumexp_rows(scores: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) of each row of a 2-D array, computed stably."""
    top = scores.max(axis=1)
    e = scores - top[:, None]
    np.exp(e, out=e)
    return top + np.log(e.sum(axis=1))


# ------------------------------------------------------------ transforms

def sigmoid(scores: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-s) without overflow warnings for large |s|."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(-np.abs(s))
    return np.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax (along the last axis), stable for large scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s.copy()
    e = s - s.max(axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


# ---------------------------------------------------------------- binary

def logloss_from_scores(labels: np.ndarray, scores: np.ndarray, weight=None) -> float:
    """Mean logistic loss of raw scores against -1/+1 (or 0/1) labels, computed stably."""
    y, s = _binary(labels, scores)
    w = _weights(weight, y.size)
    return _wmean(np.logaddexp(0.0, -(2.0 * y - 1.0) * s), w)


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-15, weight=None) -> float:
    """Mean logistic loss of probabilities (clipped to [eps, 1-eps]) against -1/+1 (or 0/1) labels."""
    y, p = _binary(labels, probs)
    w = _weights(weight, y.size)
    p = np.clip(p, eps, 1 - eps)
    return _wmean(-np.where(y > 0, np.log(p), np.log1p(-p)), w)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties sharing their mean rank."""
    _, inverse, counts = np.unique(np.asarray(x, dtype=np.float64), return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)             # rank of the last member of each tie group
    return (upper - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auc(labels: np.ndarray, scores: np.ndarray, weight=None) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN for one class.

    With weights, each (positive, negative) pair counts w_pos * w_neg.
    """
    if weight is None:
        y = np.asarray(labels).reshape(-1) > 0
        _same_length(y, np.asarray(scores).reshape(-1))
        n_pos = int(y.sum())
        n_neg = int(y.size - n_pos)
        if n_pos == 0 or n_neg == 0:
            return _NAN
        ranks = average_ranks(scores)
        return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    y, s = _binary(labels, scores)
    w = _weights(weight, y.size)
    wp = w * y
    wn = w - wp
    total_pos, total_neg = float(wp.sum()), float(wn.sum())
    if total_pos <= 0.0 or total_neg <= 0.0:
        return _NAN
    _, group = np.unique(s, return_inverse=True)   # tie groups in ascending score order
    group = group.reshape(-1)
    pos_g = np.bincount(group, weights=wp)
    neg_g = np.bincount(group, weights=wn)
    neg_below = np.cumsum(neg_g) - neg_g
    return float(np.dot(pos_g, neg_below + 0.5 * neg_g) / (total_pos * total_neg))


def normalized_entropy(labels: np.ndarray, probs: np.ndarray, weight=None) -> float:
    """Logloss divided by the entropy of the (weighted) base rate; NaN when that rate is 0 or 1.

    He et al. 2014, "Practical lessons from predicting clicks on ads at Facebook".
    """
    y, _ = _binary(labels, probs)
    return logloss(labels, probs, weight=weight) / _entropy(_wmean(y, _weights(weight, y.size)))


def calibration_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 10, weight=None) -> list[dict[str, float]]:
    """Reliability table over `bins` equal-width bins of [0, 1] (p == 1 in the last bin).

    One dict per bin of positive weight: lo, hi, count (total weight),
    mean_prob and mean_label (both weighted).
    """
    if int(bins) != bins or bins < 1:
        raise ValueError("bins must be a positive integer")
    bins = int(bins)
    y, p = _binary(labels, probs)
    w = _weights(weight, y.size)
    if w is None:
        w = np.ones_like(p)
    idx = np.clip(np.floor(p * bins), 0, bins - 1).astype(np.int64)
    count = np.bincount(idx, weights=w, minlength=bins)
    sum_p = np.bincount(idx, weights=w * p, minlength=bins)
    sum_y = np.bincount(idx, weights=w * y, minlength=bins)
    return [
        {
            "lo": i / bins,
            "hi": (i + 1) / bins,
            "count": float(count[i]),
            "mean_prob": float(sum_p[i] / count[i]),
            "mean_label": float(sum_y[i] / count[i]),
        }
        for i in np.flatnonzero(count > 0)
    ]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10, weight=None) -> float:
    """Sum over non-empty bins of (bin weight / total weight) * |mean label - mean prob|."""
    table = calibration_bins(labels, probs, bins=bins, weight=weight)
    total = sum(b["count"] for b in table)
    if total <= 0.0:
        return _NAN
    return float(sum(b["count"] * abs(b["mean_label"] - b["mean_prob"]) for b in table) / total)


# ------------------------------------------------------------ regression

def rmse(y: np.ndarray, pred: np.ndarray, weight=None) -> float:
    """Root of the (weighted) mean squared error."""
    t, p = _vector(y), _vector(pred)
    _same_length(t, p)
    return math.sqrt(_wmean((t - p) ** 2, _weights(weight, t.size)))


def mae(y: np.ndarray, pred: np.ndarray, weight=None) -> float:
    """(Weighted) mean absolute error."""
    t, p = _vector(y), _vector(pred)
    _same_length(t, p)
    return _wmean(np.abs(t - p), _weights(weight, t.size))


# ------------------------------------------------------------ multiclass

def multiclass_logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-15, weight=None) -> float:
    """Mean -log P[i, label_i], the probability clipped below at eps."""
    n = np.asarray(labels).reshape(-1).size
    P = _matrix(probs, n)
    idx = _class_indices(labels, P.shape[1])
    w = _weights(weight, n)
    picked = P[np.arange(n), idx]
    return _wmean(-np.log(np.maximum(picked, eps)), w)


def multiclass_logloss_from_scores(labels: np.ndarray, scores: np.ndarray, weight=None) -> float:
    """Mean cross-entropy of softmax(scores) against class indices, via a stable log-softmax."""
    n = np.asarray(labels).reshape(-1).size
    S = _matrix(scores, n)
    idx = _class_indices(labels, S.shape[1])
    w = _weights(weight, n)
    if n == 0:
        return _NAN
    return _wmean(_logsumexp_rows(S) - S[np.arange(n), idx], w)


def accuracy(labels: np.ndarray, probs_or_scores: np.ndarray, weight=None) -> float:
    """(Weighted) share of rows whose argmax (ties -> lowest index) is the label."""
    n = np.asarray(labels).reshape(-1).size
    M = _matrix(probs_or_scores, n)
    idx = _class_indices(labels, M.shape[1])
    w = _weights(weight, n)
    if n == 0:
        return _NAN
    return _wmean((np.argmax(M, axis=1) == idx).astype(np.float64), w)


# -------------------------------------------------------------- dispatch

def evaluate(task: str, labels: np.ndarray, scores: np.ndarray, weight=None) -> dict[str, float]:
    """All metrics of `task` from RAW model scores, keyed in a fixed order.

    binary:     logloss, auc, ne, ece   (probabilities = sigmoid(scores);
                logloss and ne are computed from the scores stably)
    regression: rmse, mae               (prediction = score)
    multiclass: logloss, accuracy       (scores is (n, C); softmax)
    """
    if task == "binary":
        y, s = _binary(labels, scores)
        w = _weights(weight, y.size)
        ll = logloss_from_scores(y, s, weight=w)
        return {
            "logloss": ll,
            "auc": auc(y, s, weight=w),
            "ne": ll / _entropy(_wmean(y, w)),
            "ece": expected_calibration_error(y, sigmoid(s), weight=w),
        }
    if task == "regression":
        return {"rmse": rmse(labels, scores, weight=weight), "mae": mae(labels, scores, weight=weight)}
    if task == "multiclass":
        return {
            "logloss": multiclass_logloss_from_scores(labels, scores, weight=weight),
            "accuracy": accuracy(labels, scores, weight=weight),
        }
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(_TASKS)}")


#: How messages name each metric.
METRIC_NAMES: dict[str, str] = {
    "logloss": "logloss", "auc": "AUC", "ne": "normalized entropy", "ece": "calibration error (ECE)",
    "rmse": "RMSE", "mae": "MAE", "accuracy": "accuracy",
}


def why_undefined(metric: str, task: str, totals, weighted: bool = False) -> str | None:
    """Why `metric` can have no value on a data set, or None when it has one.

    totals: the data's total weight per class (binary: [negatives,
    positives]; regression and multiclass: one total), row counts when the
    rows carry no weights (weighted False).  Every metric needs a positive
    total; AUC and normalized entropy also need both binary classes.  The
    reason reads after the data set's name: "va.ffm has only one class ..."."""
    totals = [float(t) for t in totals]
    if not sum(totals) > 0.0:
        return "has a total row weight of 0" if weighted else "has no rows"
    if task == "binary" and metric in ("auc", "ne"):
        negatives, positives = totals
        if not (negatives > 0.0 and positives > 0.0):
            missing = "positive" if not positives > 0.0 else "negative"
            return f"has only one class (no {missing} rows{' of positive weight' if weighted else ''})"
    return None


def defined(values: dict[str, float]) -> dict[str, float | None]:
    """Metrics with the undefined ones (NaN: AUC of one class, anything over a
    zero total weight) as None, which JSON writes as null."""
    return {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in values.items()}


def is_better(metric: str, new: float | None, old: float | None) -> bool:
    """Whether `new` strictly improves on `old` for `metric`.

    NaN (or None) is never better; any other value beats an `old` of None or NaN.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if new is None or math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return True
    return new > old if METRICS[metric][1] else new < old
