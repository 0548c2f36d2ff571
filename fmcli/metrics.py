"""Evaluation metrics on NumPy arrays (shared by the CLI, the API and tests)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from scipy.stats import rankdata


def sigmoid(scores: np.ndarray) -> np.ndarray:
    return expit(np.asarray(scores, dtype=np.float64))


def logloss_from_scores(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean logistic loss of raw scores against -1/+1 (or 0/1) labels, computed stably."""
    y = np.where(np.asarray(labels) > 0, 1.0, -1.0)
    if y.size == 0:
        return float("nan")
    return float(np.mean(np.logaddexp(0.0, -y * np.asarray(scores, dtype=np.float64))))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-15) -> float:
    """Mean logistic loss of probabilities against -1/+1 (or 0/1) labels."""
    y = np.asarray(labels) > 0
    if y.size == 0:
        return float("nan")
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN for one class."""
    y = np.asarray(labels) > 0
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
