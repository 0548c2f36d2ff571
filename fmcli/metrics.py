"""Evaluation metrics on NumPy arrays (shared by the CLI, the API and tests).

Plain NumPy on purpose: importing scipy.stats / scipy.special costs over a
second at start-up, which every `fm predict` in a shell pipeline would pay.
"""

from __future__ import annotations

import numpy as np


def sigmoid(scores: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-s) without overflow warnings for large |s|."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(-np.abs(s))
    return np.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


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


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties sharing their mean rank."""
    _, inverse, counts = np.unique(np.asarray(x, dtype=np.float64), return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)             # rank of the last member of each tie group
    return (upper - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN for one class."""
    y = np.asarray(labels) > 0
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
