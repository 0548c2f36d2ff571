"""Slow, obvious NumPy reference implementation of the fmcli models.

This module is the oracle that the fast compiled kernels are tested against.
Everything here is written for readability rather than speed: plain Python
loops over the non-zero entries of a row, float64 everywhere.

Conventions
-----------
A row is a triple ``(fields, features, values)`` of equal-length 1-D arrays
(see :class:`Row`).  Labels are ``y`` in ``{-1, +1}``; any label ``> 0`` is
treated as ``+1`` and anything else as ``-1`` (as libffm does).

Model kinds and their score ``t`` (``xt`` are the normalised values, ``j``
the feature indices, ``f`` the field indices of the row)::

    t = use_bias * b + use_linear * sum_i w[j_i] * xt_i + pair term

    lr   : no pair term
    fm   : sum_{i<l} <V[j_i], V[j_l]> xt_i xt_l
    ffm  : sum_{i<l} <V[j_i, f_l], V[j_l, f_i]> xt_i xt_l
    fwfm : sum_{i<l} R[a, b] <V[j_i], V[j_l]> xt_i xt_l,  a, b = sorted(f_i, f_l)
           (only the upper triangle of R, diagonal included, is a parameter)

Instance normalisation: ``r = 1 / sum(x**2)`` when ``normalize`` is set and the
sum is positive, otherwise ``r = 1``; ``xt_i = x_i * sqrt(r)`` so that
``xt_i * xt_l = x_i * x_l * r``.

Loss is the logistic loss ``log(1 + exp(-y t))``; ``kappa = dloss/dt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np

KINDS = ("lr", "fm", "ffm", "fwfm")


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


class Row(NamedTuple):
    """One example: parallel arrays of field indices, feature indices, values."""

    fields: np.ndarray
    features: np.ndarray
    values: np.ndarray


def make_row(fields, features, values) -> Row:
    """Build a :class:`Row` with the canonical dtypes (int64, int64, float64)."""
    fields = np.asarray(fields, dtype=np.int64).reshape(-1)
    features = np.asarray(features, dtype=np.int64).reshape(-1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not (len(fields) == len(features) == len(values)):
        raise ValueError("fields, features and values must have the same length")
    return Row(fields, features, values)


def _as_row(row) -> Row:
    if isinstance(row, dict):
        return make_row(row["fields"], row["features"], row["values"])
    fields, features, values = row
    return make_row(fields, features, values)


def _as_label(y) -> float:
    return 1.0 if float(y) > 0 else -1.0


def random_rows(
    rng: np.random.Generator,
    n_rows: int,
    n_features: int,
    n_fields: int,
    max_nnz: int,
    distinct_features: bool = True,
) -> list:
    """Random rows with 1..max_nnz entries each.

    Values are positive floats; roughly a third of them are exactly 1.0.
    With ``distinct_features`` no feature index repeats inside a row.
    """
    if distinct_features and max_nnz > n_features:
        raise ValueError("max_nnz cannot exceed n_features with distinct features")
    rows = []
    for _ in range(n_rows):
        nnz = int(rng.integers(1, max_nnz + 1))
        features = rng.choice(n_features, size=nnz, replace=not distinct_features)
        fields = rng.integers(0, n_fields, size=nnz)
        values = rng.uniform(0.1, 2.0, size=nnz)
        values[rng.random(nnz) < 1.0 / 3.0] = 1.0
        rows.append(make_row(fields, features, values))
    return rows


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass
class RefModel:
    """Parameters of a model.

    ``factors`` is ``None`` for LR, shape ``(n_features, k)`` for FM and FwFM,
    and ``(n_features, n_fields, k)`` for FFM.  ``field_weights`` is the
    ``(n_fields, n_fields)`` matrix R for FwFM and ``None`` otherwise.
    """

    kind: str
    n_features: int
    n_fields: int
    k: int
    bias: float
    linear: np.ndarray
    factors: Optional[np.ndarray]
    field_weights: Optional[np.ndarray]
    use_bias: bool = True
    use_linear: bool = True
    normalize: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}")
        self.bias = float(self.bias)
        self.linear = np.asarray(self.linear, dtype=np.float64)
        if self.linear.shape != (self.n_features,):
            raise ValueError("linear must have shape (n_features,)")
        if self.kind == "lr":
            if self.factors is not None:
                raise ValueError("an LR model has no factors")
        else:
            self.factors = np.asarray(self.factors, dtype=np.float64)
            if self.kind == "ffm":
                expected = (self.n_features, self.n_fields, self.k)
            else:
                expected = (self.n_features, self.k)
            if self.factors.shape != expected:
                raise ValueError(f"factors must have shape {expected}")
        if self.kind == "fwfm":
            self.field_weights = np.asarray(self.field_weights, dtype=np.float64)
            if self.field_weights.shape != (self.n_fields, self.n_fields):
                raise ValueError("field_weights must have shape (n_fields, n_fields)")
        elif self.field_weights is not None:
            raise ValueError("only an FwFM model has field weights")

    @classmethod
    def zeros(
        cls,
        kind: str,
        n_features: int,
        n_fields: int,
        k: int,
        use_bias: bool = True,
        use_linear: bool = True,
        normalize: bool = True,
    ) -> "RefModel":
        """All-zero model (FwFM field weights are set to 1)."""
        factors = None
        if kind in ("fm", "fwfm"):
            factors = np.zeros((n_features, k))
        elif kind == "ffm":
            factors = np.zeros((n_features, n_fields, k))
        field_weights = np.ones((n_fields, n_fields)) if kind == "fwfm" else None
        return cls(kind, n_features, n_fields, k, 0.0, np.zeros(n_features),
                   factors, field_weights, use_bias, use_linear, normalize)

    @classmethod
    def random(
        cls,
        kind: str,
        n_features: int,
        n_fields: int,
        k: int,
        rng: np.random.Generator,
        scale: float = 0.1,
        use_bias: bool = True,
        use_linear: bool = True,
        normalize: bool = True,
    ) -> "RefModel":
        """Model with normal(0, scale) bias, linear weights and factors.

        FwFM field weights are symmetric and drawn from uniform(0.5, 1.5).
        """
        model = cls.zeros(kind, n_features, n_fields, k, use_bias, use_linear, normalize)
        model.bias = float(rng.normal(0.0, scale))
        model.linear = rng.normal(0.0, scale, size=n_features)
        if model.factors is not None:
            model.factors = rng.normal(0.0, scale, size=model.factors.shape)
        if kind == "fwfm":
            upper = rng.uniform(0.5, 1.5, size=(n_fields, n_fields))
            model.field_weights = np.triu(upper) + np.triu(upper, 1).T
        return model

    def copy(self) -> "RefModel":
        return RefModel(
            self.kind, self.n_features, self.n_fields, self.k, self.bias,
            self.linear.copy(),
            None if self.factors is None else self.factors.copy(),
            None if self.field_weights is None else self.field_weights.copy(),
            self.use_bias, self.use_linear, self.normalize,
        )


def _check_row(model: RefModel, row: Row) -> None:
    if len(row.features) and (row.features.min() < 0 or row.features.max() >= model.n_features):
        raise ValueError("feature index out of range")
    if len(row.fields) and (row.fields.min() < 0 or row.fields.max() >= model.n_fields):
        raise ValueError("field index out of range")


def normalized_values(model: RefModel, row) -> np.ndarray:
    """``xt_i = x_i * sqrt(r)`` with the instance-normalisation factor r."""
    row = _as_row(row)
    squared_norm = 0.0
    for x in row.values:
        squared_norm += x * x
    r = 1.0
    if model.normalize and squared_norm > 0.0:
        r = 1.0 / squared_norm
    return row.values * math.sqrt(r)


# ---------------------------------------------------------------------------
# Score, loss, prediction
# ---------------------------------------------------------------------------


def pair_weight(model: RefModel, row: Row, xt: np.ndarray, i: int, l: int) -> float:
    """The contribution of the pair (i, l), i < l, to the score."""
    j_i, j_l = row.features[i], row.features[l]
    f_i, f_l = row.fields[i], row.fields[l]
    v = xt[i] * xt[l]
    V = model.factors
    if model.kind == "fm":
        return float(np.dot(V[j_i], V[j_l])) * v
    if model.kind == "ffm":
        return float(np.dot(V[j_i, f_l], V[j_l, f_i])) * v
    if model.kind == "fwfm":
        return model.field_weights[field_pair(f_i, f_l)] * float(np.dot(V[j_i], V[j_l])) * v
    return 0.0


def field_pair(f_i: int, f_l: int) -> tuple[int, int]:
    """The FwFM weight of a field pair lives in the upper triangle of R."""
    return (f_i, f_l) if f_i <= f_l else (f_l, f_i)


def score(model: RefModel, row) -> float:
    """The raw score t of one row."""
    row = _as_row(row)
    _check_row(model, row)
    xt = normalized_values(model, row)
    n = len(row.features)
    t = 0.0
    if model.use_bias:
        t += model.bias
    if model.use_linear:
        for i in range(n):
            t += model.linear[row.features[i]] * xt[i]
    if model.kind != "lr":
        for i in range(n):
            for l in range(i + 1, n):
                t += pair_weight(model, row, xt, i, l)
    return float(t)


def sigmoid(z: float) -> float:
    """Numerically stable logistic function."""
    z = float(z)
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logistic_loss(y, t) -> float:
    """``log(1 + exp(-y t))`` without overflow."""
    return float(np.logaddexp(0.0, -_as_label(y) * float(t)))


def dloss(y, t) -> float:
    """``kappa = d loss / d t = -y / (1 + exp(y t)) = -y * sigmoid(-y t)``."""
    y = _as_label(y)
    return -y * sigmoid(-y * float(t))


def predict(model: RefModel, rows) -> np.ndarray:
    """Probability of the positive class for each row."""
    return np.array([sigmoid(score(model, row)) for row in rows], dtype=np.float64)


def mean_loss(model: RefModel, rows, labels) -> float:
    """Average logistic loss over the rows (no regularisation)."""
    losses = [logistic_loss(y, score(model, row)) for row, y in zip(rows, labels)]
    return float(np.mean(losses)) if losses else 0.0


# ---------------------------------------------------------------------------
# Gradients (chain rule over the pair sum, loss only, no L2)
# ---------------------------------------------------------------------------


def gradients(model: RefModel, row, y) -> dict:
    """Gradient of ``logistic_loss(y, score(model, row))`` wrt every parameter.

    Returns dense arrays shaped like the parameters::

        {"bias": float, "linear": (n_features,), "factors": array or None,
         "field_weights": (n_fields, n_fields) or None}

    Each entry of ``field_weights`` is treated as an independent parameter:
    the pair (i, l), i < l, contributes to ``R[f_i, f_l]`` only.
    """
    row = _as_row(row)
    _check_row(model, row)
    xt = normalized_values(model, row)
    kappa = dloss(y, score(model, row))
    n = len(row.features)

    g_bias = kappa if model.use_bias else 0.0

    g_linear = np.zeros(model.n_features)
    if model.use_linear:
        for i in range(n):
            g_linear[row.features[i]] += kappa * xt[i]

    g_factors = None if model.factors is None else np.zeros_like(model.factors)
    g_field = None if model.field_weights is None else np.zeros_like(model.field_weights)
    V = model.factors
    for i in range(n):
        for l in range(i + 1, n):
            if model.kind == "lr":
                continue
            j_i, j_l = row.features[i], row.features[l]
            f_i, f_l = row.fields[i], row.fields[l]
            v = xt[i] * xt[l]
            if model.kind == "fm":
                # d/dV[j_i] <V[j_i], V[j_l]> v = V[j_l] v, and symmetrically.
                g_factors[j_i] += kappa * v * V[j_l]
                g_factors[j_l] += kappa * v * V[j_i]
            elif model.kind == "ffm":
                g_factors[j_i, f_l] += kappa * v * V[j_l, f_i]
                g_factors[j_l, f_i] += kappa * v * V[j_i, f_l]
            elif model.kind == "fwfm":
                R = model.field_weights[field_pair(f_i, f_l)]
                g_factors[j_i] += kappa * v * R * V[j_l]
                g_factors[j_l] += kappa * v * R * V[j_i]
                g_field[field_pair(f_i, f_l)] += kappa * v * float(np.dot(V[j_i], V[j_l]))

    return {
        "bias": float(g_bias),
        "linear": g_linear,
        "factors": g_factors,
        "field_weights": g_field,
    }


# ---------------------------------------------------------------------------
# Optimizer steps
# ---------------------------------------------------------------------------


def init_adagrad_state(model: RefModel) -> dict:
    """AdaGrad accumulators, shaped like the parameters, all starting at 1.0."""
    return {
        "bias": 1.0,
        "linear": np.ones_like(model.linear),
        "factors": None if model.factors is None else np.ones_like(model.factors),
        "field_weights": None if model.field_weights is None else np.ones_like(model.field_weights),
    }


def _update(params: np.ndarray, index, g, eta: float, accumulator: Optional[np.ndarray]) -> None:
    """One optimizer step on ``params[index]`` (in place).

    SGD when ``accumulator`` is None, otherwise AdaGrad:
    ``G += g*g; w -= eta * g / sqrt(G)``.
    """
    if accumulator is None:
        params[index] -= eta * g
    else:
        accumulator[index] += g * g
        params[index] -= eta * g / np.sqrt(accumulator[index])


def _step(model: RefModel, row, y, eta: float, lam: float, state: Optional[dict]) -> float:
    """Shared per-row update; SGD when ``state`` is None, AdaGrad otherwise.

    Returns the loss of the row before the update.
    """
    row = _as_row(row)
    _check_row(model, row)
    xt = normalized_values(model, row)
    n = len(row.features)
    t = score(model, row)
    kappa = dloss(y, t)  # once per row, from the parameters at the start of the row

    def acc(name):
        return None if state is None else state[name]

    # --- bias: g = kappa, no L2 ---
    if model.use_bias:
        g = kappa
        if state is None:
            model.bias -= eta * g
        else:
            state["bias"] += g * g
            model.bias -= eta * g / math.sqrt(state["bias"])

    # --- linear: per occurrence, g from start-of-row values, applied in row order ---
    if model.use_linear:
        start_linear = model.linear.copy()
        g_linear = [kappa * xt[i] + lam * start_linear[row.features[i]] for i in range(n)]
        for i in range(n):
            _update(model.linear, row.features[i], g_linear[i], eta, acc("linear"))

    if model.kind == "lr":
        return logistic_loss(y, t)

    V = model.factors
    if model.kind in ("fm", "fwfm"):
        start_V = V.copy()
        start_R = None if model.field_weights is None else model.field_weights.copy()
        g_factors = []
        for i in range(n):
            # sum_{l != i} weight(i, l) * V[j_l] * xt_l  (for FM: s - V[j_i] xt_i)
            pair_sum = np.zeros(model.k)
            for l in range(n):
                if l == i:
                    continue
                weight = 1.0
                if model.kind == "fwfm":
                    weight = start_R[field_pair(row.fields[i], row.fields[l])]
                pair_sum += weight * start_V[row.features[l]] * xt[l]
            g_factors.append(kappa * xt[i] * pair_sum + lam * start_V[row.features[i]])

        g_field = None
        if model.kind == "fwfm":
            g_field = np.zeros_like(start_R)
            for i in range(n):
                for l in range(i + 1, n):
                    g_field[field_pair(row.fields[i], row.fields[l])] += (
                        kappa * float(np.dot(start_V[row.features[i]], start_V[row.features[l]]))
                        * xt[i] * xt[l]
                    )

        for i in range(n):
            _update(V, row.features[i], g_factors[i], eta, acc("factors"))

        if model.kind == "fwfm":
            # one step per entry with the gradient accumulated over all pairs;
            # entries with g == 0 are left unchanged by both optimizers
            _update(model.field_weights, slice(None), g_field, eta, acc("field_weights"))

    elif model.kind == "ffm":
        # libffm's in-place pair order: later pairs see values updated earlier.
        for i in range(n):
            for l in range(i + 1, n):
                j_i, j_l = row.features[i], row.features[l]
                f_i, f_l = row.fields[i], row.fields[l]
                v = xt[i] * xt[l]
                w1 = V[j_i, f_l].copy()
                w2 = V[j_l, f_i].copy()
                g1 = lam * w1 + kappa * v * w2
                g2 = lam * w2 + kappa * v * w1
                _update(V, (j_i, f_l), g1, eta, acc("factors"))
                _update(V, (j_l, f_i), g2, eta, acc("factors"))

    return logistic_loss(y, t)


def sgd_step(model: RefModel, row, y, eta: float, lam: float) -> float:
    """One plain SGD step on one row, in place.  Returns the pre-update loss."""
    return _step(model, row, y, eta, lam, None)


def adagrad_step(model: RefModel, state: dict, row, y, eta: float, lam: float) -> float:
    """One AdaGrad step on one row; model and state updated in place.

    Returns the pre-update loss.
    """
    return _step(model, row, y, eta, lam, state)


def train(
    model: RefModel,
    rows: Sequence,
    labels: Sequence,
    order=None,
    epochs: int = 1,
    optimizer: str = "adagrad",
    eta: float = 0.2,
    lam: float = 0.0,
    state: Optional[dict] = None,
):
    """Train in place for ``epochs`` passes over ``rows``.

    ``order`` is None (natural order), one sequence of row indices used for
    every epoch, or a list of ``epochs`` such sequences (one per epoch).
    ``optimizer`` is ``"sgd"`` or ``"adagrad"``.  Returns the AdaGrad state
    (freshly initialised unless ``state`` is given), or None for SGD.
    """
    if optimizer not in ("sgd", "adagrad"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if optimizer == "adagrad" and state is None:
        state = init_adagrad_state(model)

    if order is None:
        epoch_orders = [range(len(rows))] * epochs
    elif len(order) > 0 and np.ndim(order[0]) == 1:
        epoch_orders = list(order)
        if len(epoch_orders) != epochs:
            raise ValueError("need one order per epoch")
    else:
        epoch_orders = [order] * epochs

    for epoch in range(epochs):
        for index in epoch_orders[epoch]:
            index = int(index)
            if optimizer == "sgd":
                sgd_step(model, rows[index], labels[index], eta, lam)
            else:
                adagrad_step(model, state, rows[index], labels[index], eta, lam)
    return state if optimizer == "adagrad" else None
