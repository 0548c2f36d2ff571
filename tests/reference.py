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
    fmfm : sum_{i<l} phi(i, l) xt_i xt_l with one k x k matrix M[a, c] per field
           pair, a = f_i, c = f_l:
               a < c : phi = V[j_i]^T M[a, c] V[j_l]
               a > c : phi = V[j_l]^T M[c, a] V[j_i]   (the lower field first)
               a = c : phi = V[j_i]^T S V[j_l],  S = (M[a, a] + M[a, a]^T) / 2
           (only the pairs a <= c are parameters; the model keeps
           M[c, a] = M[a, c]^T for a < c, see :func:`mirror_field_matrices`)

Instance normalisation: ``r = 1 / sum(x**2)`` when ``normalize`` is set and the
sum is positive, otherwise ``r = 1``; ``xt_i = x_i * sqrt(r)`` so that
``xt_i * xt_l = x_i * x_l * r``.

Loss is the logistic loss ``log(1 + exp(-y t))``; ``kappa = dloss/dt``.
That is the original API (``score``, ``gradients``, ``sgd_step``,
``adagrad_step``, ``train``), kept as it was.

Training matrix
---------------
:func:`train_matrix` covers every task x optimizer x option combination.

* A model of C classes is a plain list of C :class:`RefModel` (independent
  parameter sets; class c's score ``t_c`` is ``score(models[c], row)``).
  Binary and regression use a list of one.
* Tasks and labels: ``binary`` (labels 0/1, anything > 0 is 1; label
  smoothing eps: target ``q = y(1-eps) + eps/2``), ``regression`` (squared
  loss ``0.5 (t-y)^2``), ``multiclass`` (softmax cross-entropy, labels are
  class indices, ``q_c = (1-eps)[c==y] + eps/C``).  Row weights s multiply
  both the loss and every ``kappa_c``.
* Optimizers ``sgd``, ``adagrad`` (G starts at 1), ``adam`` (lazy, bias
  correction with the global step number ``t + 1``), ``ftrl`` (per element
  z, n; z initialised so that the closed form at n = 0 returns the initial
  weight), ``rowwise-adagrad`` (one G per block, starting at 1: a factor
  k-vector's G grows by the mean of its k squared gradients, a scalar's by
  its square; every weight of the block steps by ``eta g / sqrt(G)``).  The
  state is a dict made by :func:`init_state`.  An FmFM matrix is stepped row
  by row: each matrix row (k weights) is one block, for clipping and for
  row-wise AdaGrad's accumulator alike.
* L2 per group (bias, linear, factors; never the FwFM field weights nor the
  FmFM field matrices) added to the gradient as ``l2 * w`` with w the
  start-of-row / start-of-batch value
  (ffm per row: the pair's pre-step value); for ftrl, l1/l2 enter the closed
  form instead.  Per-block gradient clipping, then the optimizer step on the
  block's current value.
* Step sizes ``eta_t = eta * m(t)`` (:func:`schedule_factor`), t the 0-based
  step index of the run (a row in per-row mode, a batch in mini-batch mode).
* ``batch_size == 1``: per-row mode, the update order of ``_step`` (ffm pairs
  in place; fm/fwfm/fmfm: every gradient from the start-of-row values, then
  bias, linear and factors in row order, then each touched field weight or
  field matrix once with its gradient summed over the row's pairs).
  ``batch_size > 1``: every row of a batch reads the parameters of the start
  of the batch, and every touched block is stepped once with the batch's
  summed data gradient divided by the batch's row count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np

KINDS = ("lr", "fm", "ffm", "fwfm")
"""The original four kinds (the self-checks of every kind loop over these)."""

MODEL_KINDS = KINDS + ("fmfm",)
"""Every kind the reference implements: :data:`KINDS` plus FmFM."""

# kinds with one k-vector per feature (a (n_features, k) factor array)
_VECTOR_KINDS = ("fm", "fwfm", "fmfm")


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

    ``factors`` is ``None`` for LR, shape ``(n_features, k)`` for FM, FwFM and
    FmFM, and ``(n_features, n_fields, k)`` for FFM.  ``field_weights`` is the
    ``(n_fields, n_fields)`` matrix R for FwFM and ``None`` otherwise.
    ``field_matrices`` is the ``(n_fields, n_fields, k, k)`` array M of FmFM
    (``M[a, c]`` the k x k matrix of the field pair (a, c); only a <= c is
    read) and ``None`` otherwise; it comes last so that the positional
    constructor of the other kinds is unchanged.
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
    field_matrices: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
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
        if self.kind == "fmfm":
            self.field_matrices = np.asarray(self.field_matrices, dtype=np.float64)
            expected = (self.n_fields, self.n_fields, self.k, self.k)
            if self.field_matrices.shape != expected:
                raise ValueError(f"field_matrices must have shape {expected}")
        elif self.field_matrices is not None:
            raise ValueError("only an FmFM model has field matrices")

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
        """All-zero model (FwFM field weights are set to 1, FmFM field
        matrices to the k x k identity: both then score as FM)."""
        factors = None
        if kind in _VECTOR_KINDS:
            factors = np.zeros((n_features, k))
        elif kind == "ffm":
            factors = np.zeros((n_features, n_fields, k))
        field_weights = np.ones((n_fields, n_fields)) if kind == "fwfm" else None
        field_matrices = None
        if kind == "fmfm":
            field_matrices = np.zeros((n_fields, n_fields, k, k))
            field_matrices[:, :] = np.eye(k)
        return cls(kind, n_features, n_fields, k, 0.0, np.zeros(n_features),
                   factors, field_weights, use_bias, use_linear, normalize,
                   field_matrices)

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
        FmFM field matrices are ``I + normal(0, scale)`` for a <= c (diagonal
        pairs not symmetric) and ``M[c, a] = M[a, c]^T`` below.
        """
        model = cls.zeros(kind, n_features, n_fields, k, use_bias, use_linear, normalize)
        model.bias = float(rng.normal(0.0, scale))
        model.linear = rng.normal(0.0, scale, size=n_features)
        if model.factors is not None:
            model.factors = rng.normal(0.0, scale, size=model.factors.shape)
        if kind == "fwfm":
            upper = rng.uniform(0.5, 1.5, size=(n_fields, n_fields))
            model.field_weights = np.triu(upper) + np.triu(upper, 1).T
        if kind == "fmfm":
            model.field_matrices = np.eye(k) + rng.normal(0.0, scale, size=(n_fields, n_fields, k, k))
            mirror_field_matrices(model.field_matrices)
        return model

    def copy(self) -> "RefModel":
        return RefModel(
            self.kind, self.n_features, self.n_fields, self.k, self.bias,
            self.linear.copy(),
            None if self.factors is None else self.factors.copy(),
            None if self.field_weights is None else self.field_weights.copy(),
            self.use_bias, self.use_linear, self.normalize,
            None if self.field_matrices is None else self.field_matrices.copy(),
        )


def mirror_field_matrices(M: np.ndarray) -> np.ndarray:
    """Set ``M[c, a] = M[a, c]^T`` for every a < c, in place (and return M).

    The upper triangle (a <= c) holds the parameters; the lower one is their
    transposed copy, as a saved model stores it.  Diagonal pairs are kept.
    """
    n_fields = M.shape[0]
    for a in range(n_fields):
        for c in range(a + 1, n_fields):
            M[c, a] = M[a, c].T
    return M


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
    if model.kind == "fmfm":
        return fmfm_pair_terms(model.field_matrices, V, j_i, j_l, f_i, f_l)[0] * v
    return 0.0


def field_pair(f_i: int, f_l: int) -> tuple[int, int]:
    """The FwFM weight (FmFM matrix) of a field pair lives in the upper triangle of R (M)."""
    return (f_i, f_l) if f_i <= f_l else (f_l, f_i)


def fmfm_pair_terms(M: np.ndarray, V: np.ndarray, j_i: int, j_l: int, f_i: int, f_l: int):
    """FmFM's ``phi`` of the pair (i, l) and its derivatives (without the
    ``xt_i xt_l`` factor).

    Returns ``(phi, d phi / d V[j_i], d phi / d V[j_l], (a, c), d phi / d M[a, c])``
    with ``(a, c) = field_pair(f_i, f_l)`` the matrix the pair reads.  With
    ``lo`` the entry of the lower field and ``hi`` the other one, ``P = M[a, c]``:

    * a < c: ``phi = V[lo]^T P V[hi]``; ``d/dV[lo] = P V[hi]``,
      ``d/dV[hi] = P^T V[lo]``, ``d/dP = V[lo] V[hi]^T``;
    * a = c: ``phi = V[j_i]^T S V[j_l]`` with ``S = (P + P^T) / 2`` (the same
      for either order); ``d/dV[j_i] = S V[j_l]``, ``d/dV[j_l] = S V[j_i]``,
      ``d/dP = (V[j_i] V[j_l]^T + V[j_l] V[j_i]^T) / 2``.

    When ``j_i == j_l`` both derivatives belong to the same vector: callers
    add them up, which is the derivative of the quadratic form.
    """
    pair = field_pair(f_i, f_l)
    P = M[pair]
    v_i, v_l = V[j_i], V[j_l]
    if f_i == f_l:
        S = 0.5 * (P + P.T)
        phi = float(np.dot(v_i, S @ v_l))
        return phi, S @ v_l, S @ v_i, pair, 0.5 * (np.outer(v_i, v_l) + np.outer(v_l, v_i))
    if f_i < f_l:
        v_lo, v_hi = v_i, v_l
    else:
        v_lo, v_hi = v_l, v_i
    phi = float(np.dot(v_lo, P @ v_hi))
    g_lo = P @ v_hi
    g_hi = P.T @ v_lo
    g_P = np.outer(v_lo, v_hi)
    if f_i < f_l:
        return phi, g_lo, g_hi, pair, g_P
    return phi, g_hi, g_lo, pair, g_P


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
         "field_weights": (n_fields, n_fields) or None,
         "field_matrices": (n_fields, n_fields, k, k) or None}

    Each entry of ``field_weights`` is treated as an independent parameter:
    the pair (i, l), i < l, contributes to ``R[f_i, f_l]`` only.  Every entry
    of ``field_matrices[a, c]``, a <= c, is an independent parameter; the
    lower triangle (a > c) of its gradient is left zero.
    """
    row = _as_row(row)
    _check_row(model, row)
    return gradients_for_kappa(model, row, dloss(y, score(model, row)))


def gradients_for_kappa(model: RefModel, row, kappa: float) -> dict:
    """``kappa * d score / d parameter`` for every parameter (dense, as :func:`gradients`).

    With ``kappa = d loss / d t`` this is the gradient of the loss by the
    chain rule; the loss itself does not matter here.
    """
    row = _as_row(row)
    _check_row(model, row)
    xt = normalized_values(model, row)
    kappa = float(kappa)
    n = len(row.features)

    g_bias = kappa if model.use_bias else 0.0

    g_linear = np.zeros(model.n_features)
    if model.use_linear:
        for i in range(n):
            g_linear[row.features[i]] += kappa * xt[i]

    g_factors = None if model.factors is None else np.zeros_like(model.factors)
    g_field = None if model.field_weights is None else np.zeros_like(model.field_weights)
    g_matrices = None if model.field_matrices is None else np.zeros_like(model.field_matrices)
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
            elif model.kind == "fmfm":
                _, d_i, d_l, pair, d_P = fmfm_pair_terms(model.field_matrices, V, j_i, j_l, f_i, f_l)
                g_factors[j_i] += kappa * v * d_i
                g_factors[j_l] += kappa * v * d_l
                g_matrices[pair] += kappa * v * d_P

    return {
        "bias": float(g_bias),
        "linear": g_linear,
        "factors": g_factors,
        "field_weights": g_field,
        "field_matrices": g_matrices,
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
        "field_matrices": (None if model.field_matrices is None
                           else np.ones_like(model.field_matrices)),
    }


def _fmfm_row_gradients(model: RefModel, row: Row, xt: np.ndarray, kappa: float):
    """FmFM's data gradients of one row from the model's current values.

    Returns ``(g_entries, g_matrices)``: ``g_entries[i]`` is the gradient of
    the factor vector of entry i (``kappa * sum_{l != i} xt_i xt_l d phi /
    d V[j_i]``, one per entry, so a repeated feature gets one per occurrence);
    ``g_matrices`` maps each touched pair (a, c), a <= c, in the order of first
    touch, to its k x k gradient summed over the row's pairs.
    """
    n = len(row.features)
    g_entries = [np.zeros(model.k) for _ in range(n)]
    g_matrices = {}
    for i in range(n):
        for l in range(i + 1, n):
            _, d_i, d_l, pair, d_P = fmfm_pair_terms(
                model.field_matrices, model.factors, int(row.features[i]), int(row.features[l]),
                int(row.fields[i]), int(row.fields[l]))
            kv = kappa * xt[i] * xt[l]
            g_entries[i] += kv * d_i
            g_entries[l] += kv * d_l
            if pair in g_matrices:
                g_matrices[pair] = g_matrices[pair] + kv * d_P
            else:
                g_matrices[pair] = kv * d_P
    return g_entries, g_matrices


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

    elif model.kind == "fmfm":
        # every gradient from the start-of-row values, then the factors in row
        # order, then the matrices (entries with g == 0, the lower triangle
        # included, are left unchanged by both optimizers)
        g_entries, g_pairs = _fmfm_row_gradients(model, row, xt, kappa)
        g_factors = [g + lam * V[row.features[i]] for i, g in enumerate(g_entries)]
        g_matrices = np.zeros_like(model.field_matrices)
        for pair, g in g_pairs.items():
            g_matrices[pair] = g
        for i in range(n):
            _update(V, row.features[i], g_factors[i], eta, acc("factors"))
        _update(model.field_matrices, slice(None), g_matrices, eta, acc("field_matrices"))
        mirror_field_matrices(model.field_matrices)

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


# ===========================================================================
# The training matrix: tasks x optimizers x regularisation x schedules x
# per-row / mini-batch mode (see the module docstring, "Training matrix").
# ===========================================================================

TASKS = ("binary", "regression", "multiclass")
OPTIMIZERS = ("sgd", "adagrad", "adam", "ftrl", "rowwise-adagrad")
SCHEDULES = ("constant", "linear", "cosine", "inverse-sqrt")
GROUPS = ("bias", "linear", "factors", "field_weights", "field_matrices")


# ---------------------------------------------------------------------------
# Losses and their derivatives with respect to the score(s)
# ---------------------------------------------------------------------------


def binary_target(y01, eps: float = 0.0) -> float:
    """Smoothed target ``q = y*(1-eps) + eps/2``; a label ``> 0`` counts as 1, else 0."""
    y = 1.0 if float(y01) > 0 else 0.0
    return y * (1.0 - eps) + eps / 2.0


def binary_loss(y01, t, eps: float = 0.0) -> float:
    """``q*log(1+exp(-t)) + (1-q)*log(1+exp(t))`` with the smoothed target q."""
    q = binary_target(y01, eps)
    t = float(t)
    return float(q * np.logaddexp(0.0, -t) + (1.0 - q) * np.logaddexp(0.0, t))


def binary_dloss(y01, t, eps: float = 0.0) -> float:
    """``d binary_loss / d t = sigmoid(t) - q``."""
    return sigmoid(t) - binary_target(y01, eps)


def squared_loss(y, t) -> float:
    """``0.5 * (t - y)**2``."""
    d = float(t) - float(y)
    return 0.5 * d * d


def squared_dloss(y, t) -> float:
    """``d squared_loss / d t = t - y``."""
    return float(t) - float(y)


def softmax(t_vector) -> np.ndarray:
    """``p_c = exp(t_c) / sum_d exp(t_d)`` (shifted by the maximum first)."""
    t = np.asarray(t_vector, dtype=np.float64)
    e = np.exp(t - np.max(t))
    return e / np.sum(e)


def log_softmax(t_vector) -> np.ndarray:
    """``log p_c = t_c - log sum_d exp(t_d)``."""
    t = np.asarray(t_vector, dtype=np.float64)
    z = t - np.max(t)
    return z - math.log(float(np.sum(np.exp(z))))


def softmax_target(y, n_classes: int, eps: float = 0.0) -> np.ndarray:
    """``q_c = (1-eps)*[c == y] + eps/C``."""
    y = _as_class(y, n_classes)
    q = np.zeros(n_classes)
    for c in range(n_classes):
        q[c] = (1.0 - eps) * (1.0 if c == y else 0.0) + eps / n_classes
    return q


def softmax_loss(y, t_vector, eps: float = 0.0) -> float:
    """``-sum_c q_c log p_c`` with ``p = softmax(t)`` and the smoothed target q."""
    t = np.asarray(t_vector, dtype=np.float64)
    q = softmax_target(y, len(t), eps)
    return float(-np.sum(q * log_softmax(t)))


def softmax_dloss(y, t_vector, eps: float = 0.0) -> np.ndarray:
    """``kappa_c = d softmax_loss / d t_c = p_c - q_c``."""
    t = np.asarray(t_vector, dtype=np.float64)
    return softmax(t) - softmax_target(y, len(t), eps)


def _as_class(y, n_classes: int) -> int:
    c = int(y)
    if c != float(y) or not 0 <= c < n_classes:
        raise ValueError(f"class label {y!r} is not an integer in 0..{n_classes - 1}")
    return c


def task_loss(task: str, y, t_vector, eps: float = 0.0) -> float:
    """Unweighted loss of one row given the scores ``t_vector`` (length C)."""
    t = np.asarray(t_vector, dtype=np.float64).reshape(-1)
    if task == "binary":
        return binary_loss(y, t[0], eps)
    if task == "regression":
        return squared_loss(y, t[0])
    if task == "multiclass":
        return softmax_loss(y, t, eps)
    raise ValueError(f"unknown task {task!r}")


def task_dloss(task: str, y, t_vector, eps: float = 0.0) -> np.ndarray:
    """Unweighted ``kappa_c = d loss / d t_c``, one entry per class."""
    t = np.asarray(t_vector, dtype=np.float64).reshape(-1)
    if task == "binary":
        return np.array([binary_dloss(y, t[0], eps)])
    if task == "regression":
        return np.array([squared_dloss(y, t[0])])
    if task == "multiclass":
        return softmax_dloss(y, t, eps)
    raise ValueError(f"unknown task {task!r}")


# ---------------------------------------------------------------------------
# Several parameter sets: scores, predictions, losses, gradients
# ---------------------------------------------------------------------------


def _as_models(models) -> list:
    if isinstance(models, RefModel):
        return [models]
    models = list(models)
    if not models or not all(isinstance(m, RefModel) for m in models):
        raise ValueError("models must be a non-empty list of RefModel")
    return models


def scores_matrix(models, rows) -> np.ndarray:
    """Raw scores, shape ``(n_rows, C)``: column c is class c's model score."""
    models = _as_models(models)
    out = np.zeros((len(rows), len(models)))
    for r, row in enumerate(rows):
        for c, model in enumerate(models):
            out[r, c] = score(model, row)
    return out


def predict_task(task: str, models, rows) -> np.ndarray:
    """Binary: P(label 1), shape (n,).  Regression: the raw score, shape (n,).
    Multiclass: softmax probabilities, shape (n, C)."""
    t = scores_matrix(models, rows)
    if task == "binary":
        return np.array([sigmoid(x) for x in t[:, 0]], dtype=np.float64)
    if task == "regression":
        return t[:, 0].copy()
    if task == "multiclass":
        return np.array([softmax(row_t) for row_t in t]).reshape(t.shape)
    raise ValueError(f"unknown task {task!r}")


def row_loss(task: str, models, row, y, eps: float = 0.0, weight: float = 1.0) -> float:
    """``weight * loss`` of one row (no regularisation)."""
    models = _as_models(models)
    t = [score(m, row) for m in models]
    return float(weight) * task_loss(task, y, t, eps)


def task_gradients(task: str, models, row, y, eps: float = 0.0, weight: float = 1.0) -> list:
    """Gradient of :func:`row_loss` wrt every parameter: one dense dict per class
    (layout of :func:`gradients`), with ``kappa_c = weight * d loss / d t_c``."""
    models = _as_models(models)
    t = [score(m, row) for m in models]
    kappas = float(weight) * task_dloss(task, y, t, eps)
    return [gradients_for_kappa(m, row, k) for m, k in zip(models, kappas)]


# ---------------------------------------------------------------------------
# Step-size schedules
# ---------------------------------------------------------------------------


def schedule_factor(schedule: str, t: int, total_steps: int, warmup: int = 0) -> float:
    """``m(t)``: the multiplier of eta at 0-based step t of a run of T steps, W warmup."""
    T, W = int(total_steps), int(warmup)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    if t < W:
        return (t + 1) / W
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (t - W) / (T - W) if T > W else 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (t - W) / (T - W))) if T > W else 1.0
    return math.sqrt(max(W, 1) / (t + 1))  # inverse-sqrt


def learning_rate(eta: float, schedule: str, t: int, total_steps: int, warmup: int = 0) -> float:
    """``eta_t = eta * m(t)``."""
    return eta * schedule_factor(schedule, t, total_steps, warmup)


# ---------------------------------------------------------------------------
# Optimizer state
# ---------------------------------------------------------------------------

_SLOTS = {"sgd": (), "adagrad": ("G",), "adam": ("m", "v"), "ftrl": ("z", "n"), "rowwise-adagrad": ("G",)}


def _filled_like(model: RefModel, value: float) -> dict:
    """A dict shaped like the parameters (layout of :func:`gradients`), all ``value``."""
    return {
        "bias": float(value),
        "linear": np.full_like(model.linear, value),
        "factors": None if model.factors is None else np.full_like(model.factors, value),
        "field_weights": (None if model.field_weights is None
                          else np.full_like(model.field_weights, value)),
        "field_matrices": (None if model.field_matrices is None
                           else np.full_like(model.field_matrices, value)),
    }


def _group_l2(group: str, l2_bias: float, l2_linear: float, l2_factors: float) -> float:
    return {"bias": l2_bias, "linear": l2_linear, "factors": l2_factors, "field_weights": 0.0,
            "field_matrices": 0.0}[group]


def _group_l1(group: str, l1: float) -> float:
    return l1 if group in ("linear", "factors") else 0.0


def ftrl_initial_z(w0, alpha: float, beta: float, l1: float, l2: float):
    """``z = -(w0*(beta/alpha + l2) + sign(w0)*l1)``, and exactly 0 where ``w0 == 0``."""
    w0 = np.asarray(w0, dtype=np.float64)
    z = -(w0 * (beta / alpha + l2) + np.sign(w0) * l1)
    return np.where(w0 == 0.0, 0.0, z)


def ftrl_weight(z, n, alpha: float, beta: float, l1: float, l2: float):
    """The FTRL closed form: 0 where ``|z| <= l1``, else
    ``-(z - sign(z)*l1) / ((beta + sqrt(n))/alpha + l2)``."""
    z = np.asarray(z, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    w = -(z - np.sign(z) * l1) / ((beta + np.sqrt(n)) / alpha + l2)
    return np.where(np.abs(z) <= l1, 0.0, w)


def init_state(models, optimizer: str, l1: float = 0.0, l2_bias: float = 0.0,
               l2_linear: float = 0.0, l2_factors: float = 0.0, ftrl_beta: float = 1.0,
               eta: Optional[float] = None, total_steps: Optional[int] = None) -> dict:
    """A fresh optimizer state for the parameter sets ``models`` (one per class).

    Layout::

        {"optimizer": name, "t": 0, "total_steps": total_steps or None,
         "classes": [ {slot: dict shaped like the parameters, ...} per class ]}

    slots: sgd none; adagrad "G" (all 1.0); rowwise-adagrad "G" (all 1.0, its
    factors entry one per k-vector: factors.shape[:-1], its field_matrices
    entry one per matrix row: (n_fields, n_fields, k)); adam "m", "v" (all 0.0);
    ftrl "z" (from the current weights, see :func:`ftrl_initial_z`, with the
    group's l1/l2 and alpha = eta) and "n" (all 0.0).  ``eta`` is needed only
    for ftrl.  ``t`` counts the steps taken so far; ``total_steps`` is the T of
    the schedule (None: fixed by the first :func:`train_matrix` call, see there).

    FmFM's field_matrices slots are shaped like the whole array M, but only
    the entries of the pairs a <= c are ever read or written; the others keep
    their initial values.
    """
    models = _as_models(models)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    classes = []
    for model in models:
        cstate = {}
        if optimizer == "adagrad":
            cstate["G"] = _filled_like(model, 1.0)
        elif optimizer == "rowwise-adagrad":
            cstate["G"] = _filled_like(model, 1.0)
            if model.factors is not None:
                cstate["G"]["factors"] = np.ones(model.factors.shape[:-1])
            if model.field_matrices is not None:
                cstate["G"]["field_matrices"] = np.ones(model.field_matrices.shape[:-1])
        elif optimizer == "adam":
            cstate["m"] = _filled_like(model, 0.0)
            cstate["v"] = _filled_like(model, 0.0)
        elif optimizer == "ftrl":
            if eta is None or not eta > 0:
                raise ValueError("ftrl needs eta > 0 (alpha) to initialise z")
            cstate["n"] = _filled_like(model, 0.0)
            z = {}
            for group in GROUPS:
                w0 = model.bias if group == "bias" else getattr(model, group)
                if w0 is None:
                    z[group] = None
                    continue
                l2 = _group_l2(group, l2_bias, l2_linear, l2_factors)
                zg = ftrl_initial_z(w0, eta, ftrl_beta, _group_l1(group, l1), l2)
                z[group] = float(zg) if group == "bias" else zg
            cstate["z"] = z
        classes.append(cstate)
    return {"optimizer": optimizer, "t": 0,
            "total_steps": None if total_steps is None else int(total_steps),
            "classes": classes}


# ---------------------------------------------------------------------------
# One step of one parameter block
# ---------------------------------------------------------------------------
#
# A block is (group, index): ("bias", None); ("linear", j); ("factors", j) for
# FM/FwFM/FmFM or ("factors", (j, f)) for FFM -- a k-vector; ("field_weights",
# (a, b)) with a <= b; ("field_matrices", (a, b, r)) with a <= b -- row r of
# the k x k matrix M[a, b].  Blocks are read and written as 1-D float64 arrays.


def _read(container, group: str, index) -> np.ndarray:
    """A copy of the block from a RefModel or from a state slot dict."""
    if isinstance(container, RefModel):
        array = container.bias if group == "bias" else getattr(container, group)
    else:
        array = container[group]
    if group == "bias":
        return np.array([float(array)])
    return np.array(array[index], dtype=np.float64).reshape(-1)


def _write(container, group: str, index, value: np.ndarray) -> None:
    if group == "bias":
        if isinstance(container, RefModel):
            container.bias = float(value[0])
        else:
            container["bias"] = float(value[0])
        return
    array = getattr(container, group) if isinstance(container, RefModel) else container[group]
    array[index] = np.reshape(value, np.shape(array[index]))
    if group == "field_matrices" and isinstance(container, RefModel):
        # keep the model's lower triangle the transpose: row r of M[a, b] is
        # column r of M[b, a] (the optimizer state needs no copy)
        a, b, r = index
        if a != b:
            array[b, a, :, r] = array[a, b, r, :]


@dataclass
class _Hyper:
    optimizer: str
    eta: float
    l1: float
    l2_bias: float
    l2_linear: float
    l2_factors: float
    beta1: float
    beta2: float
    adam_eps: float
    ftrl_beta: float
    clip: float

    def l2(self, group):
        return _group_l2(group, self.l2_bias, self.l2_linear, self.l2_factors)


def clip_block(g, clip: float) -> np.ndarray:
    """``g * min(1, clip / ||g||_2)``; unchanged when ``clip == 0`` or ``g == 0``."""
    g = np.asarray(g, dtype=np.float64)
    if clip > 0.0:
        norm = math.sqrt(float(np.sum(g * g)))
        if norm > clip:
            g = g * (clip / norm)
    return g


def _apply(model: RefModel, cstate: dict, hp: _Hyper, group: str, index, g_data, w_l2,
           eta_t: float, n_step: int) -> None:
    """Step one block.

    ``g_data`` is the (summed/averaged) data gradient; ``w_l2`` the parameter
    value the L2 term uses (start of row / batch; for ffm the pair's pre-step
    value).  The step itself is applied to the block's current value.
    """
    g = np.asarray(g_data, dtype=np.float64).reshape(-1)
    if hp.optimizer != "ftrl":
        g = g + hp.l2(group) * np.asarray(w_l2, dtype=np.float64).reshape(-1)
    g = clip_block(g, hp.clip)
    w = _read(model, group, index)

    if hp.optimizer == "sgd":
        w = w - eta_t * g
    elif hp.optimizer == "adagrad":
        G = _read(cstate["G"], group, index) + g * g
        _write(cstate["G"], group, index, G)
        w = w - eta_t * g / np.sqrt(G)
    elif hp.optimizer == "rowwise-adagrad":
        G = _read(cstate["G"], group, index) + float(np.sum(g * g)) / g.size
        _write(cstate["G"], group, index, G)
        w = w - eta_t * g / np.sqrt(G)
    elif hp.optimizer == "adam":
        b1, b2 = hp.beta1, hp.beta2
        m = b1 * _read(cstate["m"], group, index) + (1.0 - b1) * g
        v = b2 * _read(cstate["v"], group, index) + (1.0 - b2) * g * g
        _write(cstate["m"], group, index, m)
        _write(cstate["v"], group, index, v)
        correction = math.sqrt(1.0 - b2 ** n_step) / (1.0 - b1 ** n_step)
        w = w - eta_t * correction * m / (np.sqrt(v) + hp.adam_eps)
    elif hp.optimizer == "ftrl":
        alpha, beta = hp.eta, hp.ftrl_beta
        z = _read(cstate["z"], group, index)
        n = _read(cstate["n"], group, index)
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / alpha
        z = z + g - sigma * w
        n = n + g * g
        _write(cstate["z"], group, index, z)
        _write(cstate["n"], group, index, n)
        w = ftrl_weight(z, n, alpha, beta, _group_l1(group, hp.l1), hp.l2(group))
    else:
        raise ValueError(f"unknown optimizer {hp.optimizer!r}")
    _write(model, group, index, w)


# ---------------------------------------------------------------------------
# Per-row mode (batch_size == 1)
# ---------------------------------------------------------------------------


def _row_update(model: RefModel, cstate: dict, hp: _Hyper, row: Row, kappa: float,
                eta_t: float, n_step: int) -> None:
    """Update one class's parameters for one row, given its (weighted) kappa."""
    xt = normalized_values(model, row)
    n = len(row.features)
    feats = [int(j) for j in row.features]
    flds = [int(f) for f in row.fields]

    if model.use_bias:
        _apply(model, cstate, hp, "bias", None, kappa, model.bias, eta_t, n_step)

    if model.use_linear:
        start_linear = model.linear.copy()
        for i in range(n):
            _apply(model, cstate, hp, "linear", feats[i], kappa * xt[i],
                   start_linear[feats[i]], eta_t, n_step)

    if model.kind in ("fm", "fwfm"):
        start_V = model.factors.copy()
        start_R = None if model.field_weights is None else model.field_weights.copy()
        g_factors = []
        for i in range(n):
            pair_sum = np.zeros(model.k)
            for l in range(n):
                if l == i:
                    continue
                weight = 1.0
                if model.kind == "fwfm":
                    weight = start_R[field_pair(flds[i], flds[l])]
                pair_sum += weight * start_V[feats[l]] * xt[l]
            g_factors.append(kappa * xt[i] * pair_sum)
        g_field = {}
        if model.kind == "fwfm":
            for i in range(n):
                for l in range(i + 1, n):
                    pair = field_pair(flds[i], flds[l])
                    g = kappa * float(np.dot(start_V[feats[i]], start_V[feats[l]])) * xt[i] * xt[l]
                    g_field[pair] = g_field.get(pair, 0.0) + g
        for i in range(n):
            _apply(model, cstate, hp, "factors", feats[i], g_factors[i],
                   start_V[feats[i]], eta_t, n_step)
        for pair, g in g_field.items():
            _apply(model, cstate, hp, "field_weights", pair, g, start_R[pair], eta_t, n_step)

    elif model.kind == "fmfm":
        # all gradients from the start-of-row values (nothing stepped yet
        # reads the factors or matrices)
        start_V = model.factors.copy()
        start_M = model.field_matrices.copy()
        g_entries, g_pairs = _fmfm_row_gradients(model, row, xt, kappa)
        for i in range(n):
            _apply(model, cstate, hp, "factors", feats[i], g_entries[i],
                   start_V[feats[i]], eta_t, n_step)
        # each touched matrix once, matrix row by matrix row (no L2 on matrices)
        for (a, c), g in g_pairs.items():
            for r in range(model.k):
                _apply(model, cstate, hp, "field_matrices", (a, c, r), g[r],
                       start_M[a, c, r], eta_t, n_step)

    elif model.kind == "ffm":
        V = model.factors
        for i in range(n):
            for l in range(i + 1, n):
                a = (feats[i], flds[l])
                b = (feats[l], flds[i])
                w1 = V[a].copy()
                w2 = V[b].copy()
                kv = kappa * xt[i] * xt[l]
                # both gradients depend only on the copies: computed before either step
                _apply(model, cstate, hp, "factors", a, kv * w2, w1, eta_t, n_step)
                _apply(model, cstate, hp, "factors", b, kv * w1, w2, eta_t, n_step)


# ---------------------------------------------------------------------------
# Mini-batch mode (batch_size > 1)
# ---------------------------------------------------------------------------


def _accumulate(acc: dict, group: str, index, g) -> None:
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    block = acc[group]
    if index in block:
        block[index] = block[index] + g
    else:
        block[index] = g.copy()


def _batch_data_gradients(model: RefModel, rows: list, kappas: list) -> dict:
    """Summed data gradients of the batch per touched block: group -> {index: array}.

    Every row reads the (unchanged) parameters of the start of the batch.  A
    block is touched when some row of the batch would step it in per-row mode,
    whatever its gradient value.
    """
    acc = {group: {} for group in GROUPS}
    V = model.factors
    for row, kappa in zip(rows, kappas):
        xt = normalized_values(model, row)
        n = len(row.features)
        feats = [int(j) for j in row.features]
        flds = [int(f) for f in row.fields]
        if model.use_bias:
            _accumulate(acc, "bias", None, kappa)
        if model.use_linear:
            for i in range(n):
                _accumulate(acc, "linear", feats[i], kappa * xt[i])
        if model.kind in ("fm", "fwfm"):
            for i in range(n):
                pair_sum = np.zeros(model.k)
                for l in range(n):
                    if l == i:
                        continue
                    weight = 1.0
                    if model.kind == "fwfm":
                        weight = model.field_weights[field_pair(flds[i], flds[l])]
                    pair_sum += weight * V[feats[l]] * xt[l]
                _accumulate(acc, "factors", feats[i], kappa * xt[i] * pair_sum)
            if model.kind == "fwfm":
                for i in range(n):
                    for l in range(i + 1, n):
                        g = kappa * float(np.dot(V[feats[i]], V[feats[l]])) * xt[i] * xt[l]
                        _accumulate(acc, "field_weights", field_pair(flds[i], flds[l]), g)
        elif model.kind == "fmfm":
            g_entries, g_pairs = _fmfm_row_gradients(model, row, xt, kappa)
            for i in range(n):
                _accumulate(acc, "factors", feats[i], g_entries[i])
            for (a, c), g in g_pairs.items():
                for r in range(model.k):
                    _accumulate(acc, "field_matrices", (a, c, r), g[r])
        elif model.kind == "ffm":
            for i in range(n):
                for l in range(i + 1, n):
                    a = (feats[i], flds[l])
                    b = (feats[l], flds[i])
                    kv = kappa * xt[i] * xt[l]
                    _accumulate(acc, "factors", a, kv * V[b])
                    _accumulate(acc, "factors", b, kv * V[a])
    return acc


def _batch_update(model: RefModel, cstate: dict, hp: _Hyper, rows: list, kappas: list,
                  eta_t: float, n_step: int) -> None:
    """Step every touched block once with ``sum / n_b`` (+ L2 of its start value)."""
    acc = _batch_data_gradients(model, rows, kappas)
    n_b = len(rows)
    for group in GROUPS:
        for index, g_sum in acc[group].items():
            w_start = _read(model, group, index)  # blocks are disjoint: still the start value
            _apply(model, cstate, hp, group, index, g_sum / n_b, w_start, eta_t, n_step)


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def _epoch_orders(order, epochs: int, n_rows: int) -> list:
    if order is None:
        return [list(range(n_rows))] * epochs
    if len(order) > 0 and np.ndim(order[0]) == 1:
        orders = [[int(i) for i in o] for o in order]
        if len(orders) != epochs:
            raise ValueError("need one order per epoch")
        return orders
    return [[int(i) for i in order]] * epochs


def _check_label(task: str, y, n_classes: int) -> None:
    if task == "multiclass":
        _as_class(y, n_classes)
    elif not math.isfinite(float(y)):
        raise ValueError(f"label {y!r} is not finite")


def _row_scores(models: list, row: Row) -> np.ndarray:
    return np.array([score(m, row) for m in models])


def _checked_loss(task, y, t, eps) -> float:
    loss = task_loss(task, y, t, eps) if np.all(np.isfinite(t)) else math.nan
    if not math.isfinite(loss):
        raise FloatingPointError("non-finite score or loss (the reference has no skip/stop guard)")
    return loss


def train_matrix(models, rows, labels, order, *, task, optimizer, eta, epochs=1,
                 weights=None, l2_bias=0.0, l2_linear=0.0, l2_factors=0.0, l1=0.0,
                 adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, ftrl_beta=1.0,
                 label_smoothing=0.0, clip_norm=0.0, schedule="constant", warmup=0,
                 batch_size=1, state=None):
    """Train the parameter sets ``models`` (a list of C RefModel, one per class;
    C = 1 for binary and regression) in place.

    ``labels``: 0/1 for binary (any label > 0 counts as 1), floats for
    regression, class indices 0..C-1 for multiclass.  ``weights``: per-row
    sample weights s >= 0 (default 1), indexed like ``rows``.  ``order``:
    None (natural order), one list of row indices used for every epoch, or a
    list of ``epochs`` such lists.

    ``state``: None for a fresh :func:`init_state` (built from the current
    weights and the hyper-parameters given here), or a state returned by an
    earlier call to continue from.  Steps are counted in ``state["t"]``, which
    carries over between calls.  The schedule's T is ``state["total_steps"]``;
    when that is None it is set to ``state["t"]`` + the steps of this call
    (epochs * steps per epoch; a step is a row in per-row mode and a batch in
    mini-batch mode).  So a single call uses T = its own step count; to split
    one run over several calls, pass ``init_state(..., total_steps=T)``.
    linear/cosine schedules refuse to run past T.

    Returns ``(state, losses)`` with ``losses[e] = sum(s*loss)/sum(s)`` over the
    rows of epoch e (0.0 when the weights sum to 0), each loss evaluated from
    the parameters the row (per-row mode) or its batch (mini-batch) started from.
    """
    models = _as_models(models)
    n_classes = len(models)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    if task == "multiclass":
        if n_classes < 2:
            raise ValueError("multiclass needs at least 2 parameter sets")
    elif n_classes != 1:
        raise ValueError(f"{task} takes exactly one parameter set")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError("label_smoothing must be in [0, 1)")
    if task == "regression" and label_smoothing != 0.0:
        raise ValueError("regression takes no label smoothing")
    if optimizer == "ftrl" and (schedule != "constant" or warmup != 0):
        raise ValueError("ftrl allows only the constant schedule without warmup")
    if l1 != 0.0 and optimizer != "ftrl":
        raise ValueError("l1 is for ftrl only")
    if int(batch_size) < 1 or int(warmup) < 0 or int(epochs) < 0:
        raise ValueError("batch_size >= 1, warmup >= 0 and epochs >= 0 required")
    if clip_norm < 0.0:
        raise ValueError("clip_norm must be >= 0")

    rows = [_as_row(r) for r in rows]
    for row in rows:
        for model in models:
            _check_row(model, row)
    if len(labels) != len(rows):
        raise ValueError("one label per row")
    for y in labels:
        _check_label(task, y, n_classes)
    if weights is None:
        weights = np.ones(len(rows))
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(weights) != len(rows) or not np.all(weights >= 0) or not np.all(np.isfinite(weights)):
        raise ValueError("weights: one finite value >= 0 per row")

    batch_size = int(batch_size)
    epoch_orders = _epoch_orders(order, int(epochs), len(rows))
    if batch_size == 1:
        steps = sum(len(o) for o in epoch_orders)
    else:
        steps = sum(-(-len(o) // batch_size) for o in epoch_orders)

    if state is None:
        state = init_state(models, optimizer, l1=l1, l2_bias=l2_bias, l2_linear=l2_linear,
                           l2_factors=l2_factors, ftrl_beta=ftrl_beta, eta=eta)
    if state["optimizer"] != optimizer or len(state["classes"]) != n_classes:
        raise ValueError("state was made for another optimizer or number of classes")
    if state["total_steps"] is None:
        state["total_steps"] = state["t"] + steps
    T = state["total_steps"]
    if schedule in ("linear", "cosine") and state["t"] + steps > T:
        raise ValueError("this call would run past the schedule's total steps")

    hp = _Hyper(optimizer, float(eta), float(l1), float(l2_bias), float(l2_linear),
                float(l2_factors), float(adam_beta1), float(adam_beta2), float(adam_eps),
                float(ftrl_beta), float(clip_norm))
    eps = float(label_smoothing)

    losses = []
    for epoch_order in epoch_orders:
        total_loss = 0.0
        total_weight = 0.0
        if batch_size == 1:
            batches = [[index] for index in epoch_order]
        else:
            batches = [epoch_order[s:s + batch_size] for s in range(0, len(epoch_order), batch_size)]
        for batch in batches:
            t = state["t"]
            eta_t = learning_rate(hp.eta, schedule, t, T, warmup)
            # every row's loss and kappas from the parameters at the start of the step
            kappas = []  # [row][class]
            for index in batch:
                s = weights[index]
                scores = _row_scores(models, rows[index])
                loss = _checked_loss(task, labels[index], scores, eps)
                total_loss += s * loss
                total_weight += s
                kappas.append(s * task_dloss(task, labels[index], scores, eps))
            for c, model in enumerate(models):
                cstate = state["classes"][c]
                if batch_size == 1:
                    _row_update(model, cstate, hp, rows[batch[0]], kappas[0][c], eta_t, t + 1)
                else:
                    _batch_update(model, cstate, hp, [rows[i] for i in batch],
                                  [k[c] for k in kappas], eta_t, t + 1)
            state["t"] = t + 1
        losses.append(float(total_loss / total_weight) if total_weight > 0 else 0.0)
    return state, losses
