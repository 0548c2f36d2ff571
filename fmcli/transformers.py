"""scikit-learn transformers: the raw-log encoder and bi-interaction pooling.

:class:`RawLogEncoder` is the raw click-log recipe of :mod:`fmcli.data.criteo`
(the one behind ``fm convert criteo|csv`` and ``fm train --spec``) as a
transformer.  ``fit`` learns a :class:`~fmcli.data.criteo.Spec` from the
raw columns of ``X`` -- which columns are categorical, and the vocabulary
of each categorical column (values seen at least ``min_count`` times) --
and ``transform`` turns rows into a sparse matrix whose column indices are
the recipe's feature ids (one entry per raw column, the value the recipe
gives), exactly the ids ``fm convert`` writes for the same rows.  The
fitted ``spec_`` is the very object ``fm convert`` writes, and
:meth:`RawLogEncoder.save_spec` writes its JSON file for ``fm train --spec``
and ``fm convert --spec``.

:class:`BiInteractionPooling` maps rows to the k-dimensional pairwise
interaction vector of a factorization machine (the "bi-interaction
pooling" of neural FMs)::

    0.5 * ((sum_i x_i v_i) ** 2 - sum_i (x_i v_i) ** 2)       (element-wise)

whose sum over its k components is the FM's pairwise term of the row's
score.  The FM is fitted from ``(X, y)`` or given already fitted
(``prefit=True``), as scikit-learn's ``SelectFromModel`` takes its model.

scikit-learn is an optional extra: importing this module without it is an
ImportError that names the extra to install.  The command line never
imports this module.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import scipy.sparse as sp
    from sklearn.base import BaseEstimator, TransformerMixin, clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import _check_feature_names_in, check_is_fitted, validate_data
except ImportError as _exc:  # pragma: no cover - exercised without the extra only
    raise ImportError("fmcli.transformers needs scikit-learn: pip install 'fm-ctr[sklearn]'") from _exc

from ._version import __version__
from .atomic import atomic_output
from .config import Config
from .data.batch import Batch
from .data.criteo import (DEFAULT_HASH_SPACE, DEFAULT_MIN_COUNT, MISSING, RARE, VALUE_TOKEN, RawReader, Spec,
                          hash_tokens)
from .data.inmemory import as_batch
from .errors import ConfigError
from .model import Model
from .predict import with_slots

__all__ = ["RawLogEncoder", "BiInteractionPooling", "bi_interaction"]

ENCODER_KINDS = ("csv", "criteo")
CRITEO_N_FEATURES = 39          # 13 integer columns, then 26 categorical ones


# ---------------------------------------------------------------------------
# raw columns of X


def _frame_kind(X) -> str | None:
    """"pandas" or "polars" for a DataFrame of either (never imported to find out), else None."""
    root = (type(X).__module__ or "").split(".")[0]
    if root in ("pandas", "polars") and type(X).__name__ == "DataFrame":
        return root
    return None


def _frame_columns(X, lib: str) -> list[tuple[np.ndarray, bool]]:
    """Each column of a DataFrame as (1-D numpy array, numeric by its dtype).

    Numeric means integer or floating point (booleans are categorical);
    a missing value of a numeric column is NaN, of another column None,
    NaN or the library's own missing marker."""
    out = []
    if lib == "pandas":
        from pandas.api import types

        for j in range(X.shape[1]):
            col = X.iloc[:, j]
            numeric = types.is_numeric_dtype(col.dtype) and not types.is_bool_dtype(col.dtype)
            if numeric and isinstance(col.dtype, np.dtype):
                out.append((col.to_numpy(), True))      # float32 stays float32 (its own shortest text)
            elif numeric:
                # nullable integers and floats (Int64 with <NA>): NaN for missing
                if col.isna().any():
                    out.append((col.to_numpy(dtype=np.float64, na_value=np.nan), True))
                else:
                    integral = getattr(col.dtype, "kind", "f") in "iu"
                    out.append((col.to_numpy(dtype=np.int64 if integral else np.float64), True))
            else:
                out.append((col.to_numpy(dtype=object), False))
    else:
        for name in X.columns:
            col = X.get_column(name)
            numeric = col.dtype.is_numeric()
            if numeric and col.null_count():
                col = col if col.dtype.is_float() else col.cast(float)
                out.append((col.fill_null(float("nan")).to_numpy(), True))
            elif numeric:
                out.append((col.to_numpy(), True))
            else:
                out.append((np.asarray(col.to_list(), dtype=object), False))
    return out


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(v != v)
    return type(v).__name__ in ("NAType", "NaTType")


def _text(v) -> str | bytes:
    """A raw value as the text a log file would hold: a string as it is, an
    integral number without a fraction ("3", not "3.0"), another number in
    its shortest form, a missing value as "" (the recipe's missing token)."""
    if _is_missing(v):
        return MISSING
    if isinstance(v, (str, bytes)):
        return v
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isfinite(v) and float(v).is_integer():
            return str(int(v))
        return str(v)               # numpy's str is the shortest text of its precision
    return str(v)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _numeric_by_content(col: np.ndarray) -> bool:
    """An object column is numeric when every value present is a number."""
    return all(_is_number(v) or _is_missing(v) for v in col.tolist())


def _binary_texts(col: np.ndarray):
    """A column as a pyarrow binary array of the values' texts (:func:`_text`),
    each distinct value of a numeric column formatted once."""
    import pyarrow as pa

    def encode(t):
        return t if isinstance(t, bytes) else t.encode("utf-8")

    if col.dtype.kind in "iuf":
        uniq, inverse = np.unique(col, return_inverse=True)
        # numpy scalars, not Python floats: a float32 value's text is float32's shortest
        texts = pa.array([encode(_text(v)) for v in uniq], pa.binary())
        return texts.take(pa.array(inverse.reshape(-1).astype(np.int64)))
    return pa.array([encode(_text(v)) for v in col.tolist()], pa.binary())


# ---------------------------------------------------------------------------
# the raw-log encoder


class RawLogEncoder(TransformerMixin, BaseEstimator):
    """Raw click-log columns to hashed feature ids: the recipe of ``fm convert``.

    Every column of ``X`` is a field (in column order).  A categorical
    column's value becomes the token hashed into a feature id; a value seen
    fewer than ``min_count`` times while fitting (or never seen) becomes the
    column's rare token ``"<rare>"``.  A numeric column is binned by
    ``numeric_rule``: ``"log-square"`` (x > 2: ``"b" + floor(ln(x)^2)``,
    else ``"v" + floor(x)``) or ``"value"`` (one feature per column with
    the number as its value).  A token's feature id is its 64-bit hash with
    the column's name, modulo ``hash_space``; see :mod:`fmcli.data.criteo`.
    Missing values (None, NaN, pandas' NA, an empty string) are the missing
    token ``""``, as an empty field of a log file is (under the value rule a
    missing number is no entry).

    Parameters
    ----------
    kind : {"csv", "criteo"}, default="csv"
        ``"csv"``: the spec of ``fm convert csv``, its columns named by the
        DataFrame's column names (``x0``, ``x1``, ... for an array).
        ``"criteo"``: the spec of ``fm convert criteo``; ``X`` holds the 39
        feature columns of a Criteo log in order (13 integer columns, then
        26 categorical ones), named I1..I13 and C1..C26 whatever ``X``
        calls them; the integer columns must hold integers.
    categorical_features : "from_dtype", None or array-like, default="from_dtype"
        For ``kind="csv"``, which columns are categorical (the others are
        numeric).  ``"from_dtype"``: string, categorical, boolean and other
        non-numeric columns; a column of Python objects is numeric when
        all its values are numbers.  None: none.  Otherwise column names,
        column indices or a boolean mask.
    min_count : int, default=fmcli.data.criteo.DEFAULT_MIN_COUNT
        A categorical value seen fewer times while fitting is rare.  1
        keeps every value (no vocabulary: unseen values keep their own id).
    hash_space : int, default=fmcli.data.criteo.DEFAULT_HASH_SPACE
        Feature ids are below this (1 .. 2**31); the width of the output.
    numeric_rule : {"log-square", "value"}, default="log-square"

    Attributes
    ----------
    spec_ : fmcli.data.criteo.Spec
        The fitted spec: what ``fm convert`` writes and ``fm train --spec``
        stores in a model.
    fields_ : ndarray of int32, shape (hash_space,)     (4 bytes per id)
        The field (column of ``X``) of each output column, to give fmcli's
        estimators as ``fields=``.  An id the fitted rows produced has the
        field of its column (the lower one where two columns share an id, a
        hash collision); an id no fitted row produced has the field of the
        column that can produce it for other rows (its rare, missing or
        value token, a numeric bin), else 0 (an unseen categorical value
        when ``min_count=1``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a DataFrame with string column names.

    ``transform`` returns a ``scipy.sparse.csr_matrix`` of float32, shape
    (n_rows, hash_space), each row's entries in column (field) order.  Two
    columns of one row that hash to the same id (rare) are two entries of
    the same matrix column, as in ``fm convert``'s output.
    """

    def __init__(self, kind="csv", *, categorical_features="from_dtype", min_count=DEFAULT_MIN_COUNT,
                 hash_space=DEFAULT_HASH_SPACE, numeric_rule="log-square"):
        self.kind = kind
        self.categorical_features = categorical_features
        self.min_count = min_count
        self.hash_space = hash_space
        self.numeric_rule = numeric_rule

    # -- reading X ----------------------------------------------------------------
    def _columns(self, X, reset: bool) -> list[tuple[np.ndarray, bool]]:
        """X's columns as (1-D array, numeric by dtype), with scikit-learn's
        checks of shape, feature names and count."""
        lib = _frame_kind(X)
        if lib is None:
            X = validate_data(self, X, dtype=None, ensure_all_finite=False, reset=reset)
            if X.dtype.kind in "iuf":
                return [(X[:, j], True) for j in range(X.shape[1])]
            return [(X[:, j], None) for j in range(X.shape[1])]   # decided by content
        validate_data(self, X, skip_check_array=True, reset=reset)
        if X.shape[0] < 1:
            raise ValueError(f"Found array with 0 sample(s) (shape={tuple(X.shape)}) while a minimum "
                             "of 1 is required.")
        if X.shape[1] < 1:
            raise ValueError(f"Found array with 0 feature(s) (shape={tuple(X.shape)}) while a minimum "
                             "of 1 is required.")
        return _frame_columns(X, lib)

    def _names(self, n: int) -> list[str]:
        names = getattr(self, "feature_names_in_", None)
        return [str(c) for c in names] if names is not None else [f"x{j}" for j in range(n)]

    def _categorical_mask(self, columns, names: list[str]) -> np.ndarray:
        """Which columns are categorical (kind "csv"), from categorical_features."""
        n = len(columns)
        cf = self.categorical_features
        if isinstance(cf, str) and cf == "from_dtype":
            return np.array([not (numeric if numeric is not None else _numeric_by_content(col))
                             for col, numeric in columns], bool)
        if cf is None:
            return np.zeros(n, bool)
        if isinstance(cf, str):
            raise ValueError(f"categorical_features must be 'from_dtype', None or a list of columns, "
                             f"got {cf!r}")
        chosen = np.asarray(cf)
        if chosen.ndim != 1:
            raise ValueError("categorical_features must be a 1-D list of columns")
        if chosen.dtype.kind == "b":
            if chosen.shape[0] != n:
                raise ValueError(f"a boolean categorical_features needs one value per column ({n}), "
                                 f"got {chosen.shape[0]}")
            return chosen.copy()
        mask = np.zeros(n, bool)
        for c in chosen.tolist():
            if isinstance(c, str):
                if c not in names:
                    raise ValueError(f"categorical_features names column {c!r}, which X does not have")
                mask[names.index(c)] = True
            elif isinstance(c, int) and -n <= c < n:
                mask[c] = True
            else:
                raise ValueError(f"categorical_features: {c!r} is not a column of X (0..{n - 1} or a name)")
        return mask

    def _make_spec(self, columns) -> Spec:
        options = dict(min_count=int(self.min_count), hash_space=int(self.hash_space),
                       numeric_rule=self.numeric_rule, created_by=f"fmcli {__version__}")
        if self.kind == "criteo":
            if not (isinstance(self.categorical_features, str) and self.categorical_features == "from_dtype"):
                raise ValueError("categorical_features applies to kind='csv'; a Criteo log's columns "
                                 "are fixed (13 integer, then 26 categorical)")
            if len(columns) != CRITEO_N_FEATURES:
                raise ValueError(f"kind='criteo' needs the {CRITEO_N_FEATURES} feature columns of a Criteo "
                                 f"log (13 integer, then 26 categorical), X has {len(columns)}")
            spec = Spec.criteo(**options)
        elif self.kind == "csv":
            names = self._names(len(columns))
            mask = self._categorical_mask(columns, names)
            spec = Spec.csv(names, None, [c for c, m in zip(names, mask) if m],
                            [c for c, m in zip(names, mask) if not m], ",", **options)
        else:
            raise ValueError(f"kind must be one of {', '.join(ENCODER_KINDS)}, got {self.kind!r}")
        spec.validate()
        return spec

    # -- the recipe -------------------------------------------------------------------
    @staticmethod
    def _encode(spec: Spec, columns):
        """(reader, block): the rows through the spec's transform, before
        rare values are collapsed (RawReader.batch does that)."""
        import pyarrow as pa

        reader = RawReader(spec, [])
        table = pa.table([_binary_texts(col) for col, _ in columns],
                         names=[f"c{j}" for j in range(len(columns))])
        block, bad = reader.transform_texts(table, "X")
        if bad:
            row, message = bad[0]
            more = f" ({len(bad)} rows are bad)" if len(bad) > 1 else ""
            raise ValueError(f"row {row - 1} of X: {message}{more}")
        return reader, block

    def _fit(self, X, y=None):
        """Learn the spec; return the fitted rows' Batch."""
        columns = self._columns(X, reset=True)
        try:
            spec = self._make_spec(columns)
            reader, block = self._encode(spec, columns)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        n = block.n_rows
        rows: dict = {}
        if spec.min_count > 1:
            # fm convert's counting pass: a value is kept when seen min_count times
            counted = False
            for c in spec.columns:
                if c.type == "categorical":
                    h, counts = np.unique(block.hashes[:, c.field], return_counts=True)
                    c.kept = h[counts >= spec.min_count]
                    counted = True
            if counted:
                rows["counted"] = n
                reader = RawReader(spec, [])      # its rare-value tables come from the kept sets
        spec.rows = {**rows, "train": n, "valid": 0, "bad": 0, "labelled": y is not None}
        batch = reader.batch(block)
        self.spec_ = spec
        self.fields_ = self._fields_of_ids(spec, batch)
        return batch

    @staticmethod
    def _fields_of_ids(spec: Spec, batch: Batch) -> np.ndarray:
        """The field of each id.  First the ids the fitted rows produced
        (the lowest field where two columns share one), then, for ids still
        free, those a column can produce for other rows: its rare, missing
        or value token, and a numeric column's bins (v-64 .. v2 and b0 ..
        b1967, which covers every integer below 2^64); 0 for the others."""
        m = spec.n_fields
        out = np.full(spec.hash_space, -1, np.int32)     # -1: no field yet

        def claim(ids: np.ndarray, flds: np.ndarray) -> None:
            pairs = np.unique(ids.astype(np.int64) * m + flds.astype(np.int64))   # by id, then field
            pid, pf = pairs // m, pairs % m
            first = np.ones(pairs.shape[0], bool)
            first[1:] = pid[1:] != pid[:-1]
            pid, pf = pid[first], pf[first]
            free = out[pid] < 0
            out[pid[free]] = pf[free]

        claim(batch.features, batch.fields)
        ids, flds = [], []
        for c in spec.columns:
            if c.type == "numeric" and spec.numeric_rule == "value":
                tokens = [VALUE_TOKEN]
            elif c.type == "numeric":
                tokens = [MISSING] + [f"v{i}" for i in range(-64, 3)] + [f"b{i}" for i in range(1968)]
            elif c.type == "categorical" and c.kept is not None:
                tokens = [RARE]
            else:
                tokens = [MISSING]
            h = hash_tokens(c.name, tokens)
            ids.append((h % np.uint64(spec.hash_space)).astype(np.int64))
            flds.append(np.full(len(tokens), c.field, np.int64))
        claim(np.concatenate(ids), np.concatenate(flds))
        out[out < 0] = 0
        return out

    def _to_matrix(self, batch: Batch):
        return sp.csr_matrix((batch.values, batch.features, batch.indptr),
                             shape=(batch.n_rows, self.spec_.hash_space))

    # -- scikit-learn's interface ------------------------------------------------------
    def fit(self, X, y=None):
        """Learn the spec (column kinds, vocabularies) from the raw rows X."""
        self._fit(X, y)
        return self

    def fit_transform(self, X, y=None):
        """fit, then transform X (one pass over X)."""
        return self._to_matrix(self._fit(X, y))

    def transform(self, X):
        """The rows of X as a CSR matrix of feature ids (see the class docstring)."""
        check_is_fitted(self, "spec_")
        columns = self._columns(X, reset=False)
        reader, block = self._encode(self.spec_, columns)
        return self._to_matrix(reader.batch(block))

    def get_feature_names_out(self, input_features=None):
        """``id0`` .. ``id{hash_space - 1}``: an output column is a feature id."""
        check_is_fitted(self, "spec_")
        _check_feature_names_in(self, input_features)
        ids = np.arange(self.spec_.hash_space).astype(str)
        return np.char.add("id", ids).astype(object)

    def save_spec(self, path) -> None:
        """Write the fitted spec as the JSON file ``fm convert`` writes (for
        ``fm train --spec`` and ``fm convert --spec``), atomically."""
        check_is_fitted(self, "spec_")
        with atomic_output(path, "w") as f:
            f.write(self.spec_.dumps())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True          # NaN is a missing value
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.transformer_tags.preserves_dtype = []  # the output is float32, the recipe's values
        return tags


# ---------------------------------------------------------------------------
# bi-interaction pooling


def _fm_model(obj) -> Model:
    """The FM of an fmcli Model or fitted fmcli estimator; other kinds refused."""
    model = obj if isinstance(obj, Model) else getattr(obj, "model_", None)
    if model is None:
        raise NotFittedError("with prefit=True, estimator must be a fitted fmcli estimator (one with "
                             "a model_) or an fmcli Model")
    if not isinstance(model, Model):
        raise TypeError(f"estimator.model_ is a {type(model).__name__}, not an fmcli Model")
    s = model.spec
    if s.kind != "fm":
        raise ValueError(f"bi-interaction pooling pools an FM's shared factor vectors; a {s.kind} model "
                         "has none (FFM's vectors depend on the other field, FwFM and FmFM weigh each "
                         "field pair, LR has no factors): fit an FM")
    if s.task == "multiclass":
        raise ValueError("bi-interaction pooling needs one set of factors; a multiclass FM has one "
                         "per class")
    return model


def bi_interaction(model: Model, batch: Batch) -> np.ndarray:
    """The pooled vectors of a batch's rows under an FM, (n, k) float64.

    As the scoring kernel does: each value is scaled by the row's 1/||x||
    when the model normalizes (computed in float64, applied in float32),
    ids the model does not know add nothing (they still count in the
    norm), and every entry counts, repeated ids included."""
    s = model.spec
    if model.feature_ids is not None:
        batch = with_slots(batch, model.id_map())
    n, nnz = batch.n_rows, batch.nnz
    indptr = np.asarray(batch.indptr, np.int64)
    row_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    values = np.asarray(batch.values, np.float32)
    if s.normalize and nnz:
        norm2 = np.bincount(row_of, weights=values.astype(np.float64) ** 2, minlength=n)
        scale = np.ones(n, np.float64)
        np.divide(1.0, np.sqrt(norm2), out=scale, where=norm2 > 0)
        values = values * scale.astype(np.float32)[row_of]
    keep = np.asarray(batch.features) < s.n_features
    feats = np.asarray(batch.features)[keep]
    x = values[keep].astype(np.float64)
    counts = np.bincount(row_of[keep], minlength=n)
    kept_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=kept_ptr[1:])
    # only the factors of the ids present, in float64
    used, local = np.unique(feats, return_inverse=True)
    V = np.asarray(model.params["factors"])[used].astype(np.float64)
    shape = (n, used.shape[0])
    local = local.reshape(-1)
    linear = sp.csr_matrix((x, local, kept_ptr), shape=shape) @ V            # sum_i x_i v_i
    squares = sp.csr_matrix((x * x, local, kept_ptr), shape=shape) @ (V * V)  # sum_i (x_i v_i)^2
    return 0.5 * (np.asarray(linear) ** 2 - np.asarray(squares))


def _task_of(y) -> tuple[str, np.ndarray]:
    """(task, labels): binary when y holds exactly two distinct values
    (labels 0 and 1, the larger value 1), else regression on numeric y."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    classes = np.unique(y)
    if classes.shape[0] == 2:
        return "binary", (y == classes[1]).astype(np.float32)
    try:
        if y.dtype.kind not in "biufO":
            raise TypeError
        return "regression", y.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"bi-interaction pooling fits a binary FM (y with two distinct values) or a "
                         f"regression FM (numeric y); y has {classes.shape[0]} distinct values that "
                         "are not numbers") from None


class BiInteractionPooling(TransformerMixin, BaseEstimator):
    """An FM's bi-interaction pooling: ``0.5 ((sum_i x_i v_i)^2 - sum_i (x_i v_i)^2)``.

    Each row becomes the k-vector of its FM pairwise interactions
    (element-wise squares; the sum of its components is the FM's pairwise
    term of the row's score).  Values are scaled by the row's 1/||x|| when
    the FM normalizes, as its scores are.

    Parameters
    ----------
    estimator : fmcli estimator, fmcli Model or None, default=None
        None: ``fit`` trains an FM on ``(X, y)`` with the defaults of
        :class:`fmcli.config.Config` (k, epochs, optimizer, seed, ...), its
        task taken from ``y``: binary when ``y`` has exactly two distinct
        values (the larger one is the positive class), otherwise
        regression (``y`` must then be numeric).  An fmcli estimator: with
        ``prefit=False`` a clone of it is fitted on ``(X, y)`` (choose
        hyperparameters this way); with ``prefit=True`` it must be fitted
        already.  An fmcli :class:`~fmcli.model.Model` (e.g. from
        ``fmcli.load_model``) needs ``prefit=True``.  Only FM models
        (binary or regression) can be pooled: FFM, FwFM and FmFM have no
        single vector per feature, and are refused with a ValueError.
    prefit : bool, default=False
        Whether ``estimator`` is fitted already; ``transform`` then works
        without ``fit`` (``fit`` only records the input's shape).

    Attributes
    ----------
    model_ : fmcli.model.Model
        The FM pooled.
    estimator_ : object or None
        The fitted estimator (the clone, or ``estimator`` with
        ``prefit=True``); None when the FM was fitted directly.
    task_ : str
        "binary" or "regression" (the FM's task).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a DataFrame with string column names.

    ``transform`` returns a float64 array of shape (n_rows, k); its
    columns are named ``bi0`` .. ``bi{k-1}`` (``set_output`` works).
    """

    def __init__(self, estimator=None, *, prefit=False):
        self.estimator = estimator
        self.prefit = prefit

    # -- rows ---------------------------------------------------------------------------
    def _check_X(self, X, reset: bool, y=None):
        """scikit-learn's checks of X (and y): a DataFrame is kept as it is
        (fmcli reads its columns by name); anything else becomes a numeric
        array or sparse matrix."""
        if _frame_kind(X) is not None:
            validate_data(self, X, skip_check_array=True, reset=reset)
            if X.shape[0] < 1:
                raise ValueError(f"Found array with 0 sample(s) (shape={tuple(X.shape)}) while a "
                                 "minimum of 1 is required.")
            return X
        return validate_data(self, X, accept_sparse=("csr", "csc", "coo"), dtype=(np.float64, np.float32),
                             reset=reset)

    def _batch(self, X) -> Batch:
        """The rows of X as the pooled model reads them: an fmcli estimator
        reads its own input (its fields, the columns of the DataFrame it was
        fitted on); otherwise X is read as at fit time."""
        source = getattr(self, "estimator_", None)
        if source is None and self.prefit and not hasattr(self, "model_"):
            source = self.estimator
        read = getattr(source, "_check_predict_X", None)
        if source is not None and not isinstance(source, Model) and callable(read):
            return read(X)
        return as_batch(X, schema=getattr(self, "schema_", None))[0]

    def _model(self) -> Model:
        if hasattr(self, "model_"):
            return self.model_
        if self.prefit:
            return _fm_model(self.estimator)
        check_is_fitted(self, "model_")    # raises NotFittedError
        raise AssertionError("unreachable")

    # -- scikit-learn's interface ----------------------------------------------------------
    def fit(self, X, y=None, **fit_params):
        """Fit the FM on (X, y) (or, with prefit=True, take the given one).
        fit_params go to the estimator's fit (e.g. sample_weight)."""
        if self.prefit:
            model = _fm_model(self.estimator)
            self._check_X(X, reset=True)
            self.estimator_ = self.estimator if not isinstance(self.estimator, Model) else None
            self.schema_ = None
        elif self.estimator is not None:
            if isinstance(self.estimator, Model):
                raise ValueError("an fmcli Model is fitted already: give it with prefit=True")
            self._check_X(X, reset=True)
            est = clone(self.estimator).fit(X, y, **fit_params)
            model = _fm_model(est)
            self.estimator_ = est
            self.schema_ = None
        else:
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
            if _frame_kind(X) is None:
                X, y = validate_data(self, X, y, accept_sparse=("csr", "csc", "coo"),
                                     dtype=(np.float64, np.float32), y_numeric=False, reset=True)
            else:
                self._check_X(X, reset=True)
            sample_weight = fit_params.pop("sample_weight", None)
            if fit_params:
                raise TypeError(f"fit() got an unexpected keyword argument {next(iter(fit_params))!r}")
            task, labels = _task_of(y)
            batch, schema = as_batch(X, labels, sample_weight=sample_weight)
            model = _fm_model(_train_fm(task, batch))
            self.estimator_ = None
            self.schema_ = schema
        self.model_ = model
        self.task_ = model.spec.task
        return self

    def transform(self, X):
        """The pooled k-vector of each row of X, float64 (n, k)."""
        model = self._model()
        X = self._check_X(X, reset=False) if hasattr(self, "model_") else X
        return bi_interaction(model, self._batch(X))

    def get_feature_names_out(self, input_features=None):
        """``bi0`` .. ``bi{k-1}``."""
        model = self._model()
        if hasattr(self, "n_features_in_"):
            _check_feature_names_in(self, input_features)
        return np.asarray([f"bi{i}" for i in range(model.spec.k)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.required = self.estimator is None and not self.prefit
        return tags


def _train_fm(task: str, batch: Batch) -> Model:
    """An FM of Config's defaults for the task, trained on the batch."""
    from .train import train

    return train(Config(model="fm", task=task), batch)
